"""The export stage as one package: merged model -> GGUF files, checked, with their Modelfile.

    stage.py      export_gguf(config, run) -> ExportResult: the stage, a short sequence of steps
    staging.py    the converter's input: a staged view of merged/ and the GGUF metadata
    checks.py     GGUF metadata, the runtime's chat prompt, the test answer, the 16-bit file's bar
    imatrix.py    the importance matrix (llama-imatrix on the train split)
    quality.py    the quality table (llama-perplexity on the val split) and its bars
    adapter.py    the LoRA adapter as GGUF, checked on its base
    modelfile.py  the Ollama Modelfile derived from the chat template

Logit agreement (prompts, HF and GGUF log-probs, top-1, KL) lives in `medtune.verify`, shared with merge.
"""

from medtune.export.adapter import AdapterGGUF, export_adapter_gguf
from medtune.export.checks import gguf_weight_type, quantized_base_note
from medtune.export.imatrix import ImatrixInfo, prepare_imatrix
from medtune.export.modelfile import Modelfile, build_modelfile, derive_pieces
from medtune.export.quality import QualityBarError, QualityRow, QualityTable, heldout_corpus, split_text
from medtune.export.stage import ExportResult, GGUFCheck, export_gguf
from medtune.export.staging import base_model_info, gguf_metadata, staged_model_folder

__all__ = [
    "AdapterGGUF",
    "ExportResult",
    "GGUFCheck",
    "ImatrixInfo",
    "Modelfile",
    "QualityBarError",
    "QualityRow",
    "QualityTable",
    "base_model_info",
    "build_modelfile",
    "derive_pieces",
    "export_adapter_gguf",
    "export_gguf",
    "gguf_metadata",
    "gguf_weight_type",
    "heldout_corpus",
    "prepare_imatrix",
    "quantized_base_note",
    "split_text",
    "staged_model_folder",
]
