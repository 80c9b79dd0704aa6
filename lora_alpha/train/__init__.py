"""The training application: LoRAAlphaModule, data modules, the alpha finder, run folders, the CLI.

Above the primitives (``lora_alpha``) and the callbacks; needs the ``train`` extra (Lightning,
transformers, TensorBoard, matplotlib).
"""
from lora_alpha.train.data import CausalLMDataModule, RottenTomatoesDataModule, TextClassificationDataModule
from lora_alpha.train.errors import UsageError
from lora_alpha.train.finder import AlphaFinderResult, find_alpha
from lora_alpha.train.module import LoRAAlphaModule

__all__ = ["AlphaFinderResult", "CausalLMDataModule", "LoRAAlphaModule", "RottenTomatoesDataModule",
           "TextClassificationDataModule", "UsageError", "find_alpha"]
