"""The LLaDA2.0-Uni demo as a Hugging Face Space (or locally: `python app.py`).

The model is a converted LLaDA2.0-Uni folder or Hub repo id named by the LLADA_UNI_MODEL variable (a Space's
"Variables and secrets" setting), else the tiny shapes model shipped inside the llada-uni package. LLADA_UNI_DEVICE
and LLADA_UNI_DTYPE pick where and in what precision it runs (default: cuda in bfloat16 when there is a GPU, else
the CPU in float32).
"""

import os
import sys
from pathlib import Path

# A Space built from this folder with the repository's src/ copied beside app.py (see README.md) runs that copy.
HERE = Path(__file__).resolve().parent
if (HERE / "src" / "diffusers_llada_uni").is_dir():
    sys.path.insert(0, str(HERE / "src"))

from diffusers_llada_uni.demo import build_app, launch, load_pipeline  # noqa: E402

MODEL = os.environ.get("LLADA_UNI_MODEL") or None
pipe = load_pipeline(MODEL, device=os.environ.get("LLADA_UNI_DEVICE") or None,
                     dtype=os.environ.get("LLADA_UNI_DTYPE") or None)
demo = build_app(pipe, model_name=MODEL)

if __name__ == "__main__":
    # Spaces serve on 0.0.0.0:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT override it).
    launch(demo, host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
