"""The offline main job: a small Transformer on the embedded bible-en-fr corpus, en -> fr, on CPU.

About 20 minutes on a 2-core CPU. Every field can be overridden: --config.num_train_steps=100.
A field that is None is chosen for you (what None means is in transformer/run_config.py's RANGES
and the README's config reference); give it a value to fix it.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data: 'bible_en_fr' (embedded, offline), any TFDS translation dataset ('wmt14_translate/de-en'),
  # or 'local' with local_files.{train,validation,test} = 'file.tsv[.gz]' or a 'prefix' of
  # prefix.<source_lang> / prefix.<target_lang> files.
  config.dataset = 'bible_en_fr'
  config.source_lang = 'en'
  config.target_lang = 'fr'
  config.train_split = 'train'
  config.eval_split = 'validation'
  config.test_split = 'test'
  config.local_files = ml_collections.ConfigDict({'train': '', 'validation': '', 'test': ''})
  config.tfds_data_dir = ''  # '' = TFDS's default (~/tensorflow_datasets)
  config.data_cache_dir = ''  # where local files are prepared ('' = ~/.cache/transformer/prepared)
  # Loader processes; None = auto (none on a CPU backend, else half the cores).
  config.data_workers = placeholder(int)
  config.skip_malformed = False  # True: skip (and count) malformed lines of local files
  # Joint SentencePiece vocabulary; None = from the corpus (transformer/training/recipe.py).
  config.vocab_size = placeholder(int)
  config.character_coverage = 1.0
  config.vocab_max_sentences = 1_000_000
  config.max_length = 128  # tokens per side (EOS included) and per packed row
  config.overlong = 'drop'  # 'drop' or 'truncate' longer examples (counted and logged)
  config.pack = True  # pack several examples per training row

  # Start from a pretrained Hugging Face Marian (opus-mt) directory: its model, its tokenizer
  # (config.model and vocab_size are then the pretrained model's; model.dtype still applies).
  config.init_from = ''
  # Model (vocab_size and special ids come from the tokenizer).
  config.model = ml_collections.ConfigDict(
    dict(
      d_model=256,
      num_heads=4,
      d_ff=1024,
      num_encoder_layers=3,
      num_decoder_layers=3,
      # None = from the passes the run makes over the data (transformer/training/recipe.py): none for
      # the embedded corpus (1,000 steps read it about twice), more for smaller corpora.
      dropout_rate=placeholder(float),
      attention_dropout_rate=0.0,
      relu_dropout_rate=0.0,
      max_positions=256,
      positional_encoding='sinusoidal',
      norm_position='pre',
      attention_implementation='reference',
      dtype='float32',
      remat='none',  # 'none' | 'minimal' | 'full': activations recomputed in the backward pass
      scan_layers=False,  # True: each stack's layers stacked and run by nnx.scan (deep models)
    )
  )

  # Optimisation: Adam(0.9, 0.98, 1e-9); the paper's warm-up to a peak of
  # scale · d_model^-0.5 · warmup^-0.5, then 'rsqrt' (paper: · (warmup/step)^0.5) or 'linear'
  # (straight to 0 at num_train_steps, which anneals a short run).
  config.batch_size = 16  # rows per step over all devices (each row: max_length tokens)
  config.grad_accum_steps = 1
  config.lr_schedule = 'linear'
  config.num_train_steps = 1000  # about 12-16 minutes on a 2-core CPU
  config.max_epochs = 20  # ... but at most this many passes over the data (None: no cap)
  # None = no budget; a safety cap (a run that hits it stops early).
  config.max_train_minutes = 20.0
  # Peak lr = 0.45 · 256^-0.5 · 200^-0.5 ≈ 2e-3 at step 200: a short warm-up for a short run.
  config.warmup_steps = 200
  config.learning_rate_scale = 0.45
  config.label_smoothing = 0.1
  config.max_grad_norm = placeholder(float)  # None = no clipping
  config.parallelism = 'shard_map'  # 'shard_map' | 'pmap' | 'gspmd' | 'none'
  # The ('data', 'fsdp', 'tensor') device mesh of parallelism='gspmd' (-1: the devices left);
  # the other modes split over data only. README: choosing a mesh.
  config.mesh = (-1, 1, 1)

  # Loop.
  config.log_every = 50
  config.eval_every = 200  # validation loss and BLEU; the best checkpoint is kept and tested
  config.checkpoint_every = 200
  config.keep_checkpoints = 5
  # Stop after this many validations without a better BLEU (None = never).
  config.early_stopping_evals = placeholder(int)
  # Also try the average of the last N checkpoints (paper §6.1; None = no).
  config.average_last = placeholder(int)
  config.eval_batch_size = 64
  config.eval_max_batches = placeholder(int)  # None = the whole validation split

  # Translation and BLEU.
  # Validation sentences decoded at each evaluation (None = all).
  config.bleu_sentences = 200
  config.eval_beam_size = 1  # greedy during training (fast); the test set uses both below
  config.test_beam_sizes = (1, 4)
  config.test_max_sentences = placeholder(int)  # None = the whole test split
  config.length_penalty = 0.6
  # At the end of training the test beam sizes and these length penalties are tried on the
  # validation sentences; the best are used for the test and by `translate` (an empty tuple,
  # `--config.length_penalty_grid='()'`, keeps length_penalty).
  config.length_penalty_grid = (0.2, 0.6, 1.0, 1.4)
  config.decode_extra_length = 50
  config.decode_batch_size = 64
  config.num_samples = 3  # sample translations logged at each evaluation
  return config
