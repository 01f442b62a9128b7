"""The model's window attention stays on SDPA off CUDA: the CPU path never loads the Triton kernels."""

import subprocess
import sys

CPU_FORWARD = """
import sys, torch
from pixdeploy.config import preset
from pixdeploy.model import PixTokenLM, window_attention_sdpa
torch.manual_seed(0)
m = PixTokenLM(preset("tiny")).eval()
images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
with torch.no_grad():
    m.encode_images(images, torch.tensor([[32, 32], [9, 32]]))
assert "pixdeploy.kernels.window_attention_triton" not in sys.modules, "the CPU path loaded the Triton kernels"
print("ok")
"""


def test_cpu_inference_never_loads_the_triton_kernels():
    proc = subprocess.run([sys.executable, "-c", CPU_FORWARD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
