"""What a first run on a GPU or TPU relies on, checked on CPU: peaks and MFU, cluster detection,
installs that leave jax alone, the accelerator check itself."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import tiny_run
from transformer.model import flops
from transformer.parallel import distributed
from transformer.training import meter as meter_lib


@pytest.mark.parametrize(
  'kind,dtype,peak',
  [
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989e12),
    ('NVIDIA H100 PCIe', 'bfloat16', 756e12),
    ('NVIDIA H200', 'bfloat16', 989e12),
    ('NVIDIA B200', 'bfloat16', 2250e12),
    ('NVIDIA L40S', 'bfloat16', 362e12),
    ('Tesla V100-SXM2-16GB', 'float16', 125e12),
    ('TPU v4', 'bfloat16', 275e12),
    ('TPU v5 lite', 'bfloat16', 197e12),
    ('TPU v5p', 'bfloat16', 459e12),
    ('TPU v6 lite', 'bfloat16', 918e12),
  ],
)
def test_known_devices_have_their_data_sheet_peak(kind, dtype, peak):
  assert flops.accelerator_peak(kind, dtype)[0] == peak


def test_devices_without_the_units_or_unknown_give_no_mfu():
  assert flops.accelerator_peak('Tesla V100-SXM2-16GB', 'bfloat16') == (
    0.0,
    'Tesla V100-SXM2-16GB has no bfloat16 matmul units (MFU not defined)',
  )
  assert flops.accelerator_peak('Some Future GPU', 'bfloat16')[0] == 0.0


class _FakeDevice:
  platform, device_kind = 'gpu', 'NVIDIA H100 80GB HBM3'


@pytest.mark.parametrize('processes,local_devices', [(1, 2), (2, 2)])
def test_mfu_counts_flops_and_peak_over_the_same_devices(monkeypatch, processes, local_devices):
  """A step of the global batch taking 1 s on processes × local_devices H100s."""
  devices = processes * local_devices
  monkeypatch.setattr(flops.jax, 'devices', lambda: [_FakeDevice()] * devices)
  peak, source = flops.device_peak('bfloat16', num_devices=devices)
  assert peak == devices * 989e12 and f'× {devices} device(s)' in source
  step_flops = 0.4 * peak  # a step that keeps every device 40% busy for one second
  clock = iter([0.0, 0.0, 1.0, 1.0])
  monkeypatch.setattr(meter_lib.time, 'perf_counter', lambda: next(clock))
  meter = meter_lib.Meter(step_flops, peak, source, total_steps=10)
  meter.steps = 1
  assert meter.report(step=1)['mfu'] == pytest.approx(0.4)


def test_a_multi_process_cluster_is_detected(monkeypatch):
  for name in (
    'JAX_COORDINATOR_ADDRESS',
    'SLURM_JOB_ID',
    'OMPI_COMM_WORLD_SIZE',
    'TPU_WORKER_HOSTNAMES',
  ):
    monkeypatch.delenv(name, raising=False)
  assert distributed.detected_cluster() is None
  slurm = {
    'SLURM_JOB_ID': '7',
    'SLURM_STEP_NODELIST': 'node[1-2]',
    'SLURM_NTASKS': '2',
    'SLURM_PROCID': '1',
    'SLURM_LOCALID': '0',
  }
  for name, value in slurm.items():
    monkeypatch.setenv(name, value)
  assert distributed.detected_cluster() == 'SLURM'
  monkeypatch.setenv('SLURM_NTASKS', '1')  # one task: nothing to coordinate
  assert distributed.detected_cluster() is None
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, 'initialize', lambda *a: calls.append(a))
  monkeypatch.setenv('SLURM_NTASKS', '2')
  assert distributed.initialize() == 'SLURM' and calls == [()]
  assert distributed.initialize('h:1', 2, 0) == 'flags' and calls[-1] == ('h:1', 2, 0)
  monkeypatch.delenv('SLURM_JOB_ID')
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'w-0,w-1')
  assert distributed.detected_cluster() == 'TPU pod'
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'w-0')
  monkeypatch.setenv('OMPI_COMM_WORLD_SIZE', '4')
  assert distributed.detected_cluster() == 'Open MPI'
  assert 'jax._src' not in (pathlib.Path(distributed.__file__).read_text())


@pytest.mark.slow
def test_the_accelerator_check_runs_small_on_cpu():
  command = [sys.executable, '-m', 'benchmarks.accelerator_check', '--small', '--steps=2']
  result = subprocess.run(
    command, cwd=tiny_run.ROOT, env=tiny_run.env(), capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['device_kind'] == 'cpu' and report['attention'][0]['passed']
  assert report['train'][0]['tokens_per_second'] > 0 and report['train'][0]['mfu'] > 0
  assert report['decode']['beam4_tokens_per_second'] > 0


@pytest.mark.slow
def test_installing_for_colab_leaves_the_installed_jax_alone(tmp_path):
  """What the notebooks' first cell runs, as a dry run: no jax package is installed or replaced."""
  report = tmp_path / 'report.json'
  script = os.path.join(tiny_run.ROOT, 'notebooks', 'colab_install.py')
  result = subprocess.run(
    [sys.executable, script, tiny_run.ROOT, '--dry-run', '--report', str(report)],
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  planned = {item['metadata']['name'].lower() for item in json.loads(report.read_text())['install']}
  assert planned.isdisjoint(
    {'jax', 'jaxlib', 'jax-cuda12-plugin', 'jax-cuda13-plugin', 'libtpu'}
  ), planned
