"""Models leaving the package: `python -m transformer.export --format=ctranslate2|stablehlo|marian`.

ctranslate2_model   a Transformer as a CTranslate2 model, through CTranslate2's spec API
stablehlo           the translate computation (encoder + search) serialized with jax.export
__main__            the command line over both (and over `transformer.pretrained.marian.save`)
"""
