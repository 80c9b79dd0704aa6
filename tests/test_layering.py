"""The architecture's arrows (lora_alpha -> callbacks -> signaldrift): imports only point down."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_importing_signaldrift_loads_no_framework():
    code = ("import sys, signaldrift; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('lightning', 'pytorch_lightning', 'tensorboard', 'transformers', 'peft', 'lora_alpha', 'callbacks')];"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def _imports(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_no_upward_imports():
    assert not _imports("signaldrift") & {"lora_alpha", "callbacks"}
    assert "lora_alpha" not in _imports("callbacks")


def test_lora_alpha_primitives_and_the_train_floor():
    """lora_alpha's primitives never import the application floor (lora_alpha.train), callbacks or a framework
    at module level (the package's lazy ``find_alpha`` loads the application only when asked for)."""
    for path in (ROOT / "lora_alpha").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                assert not name.startswith(("lora_alpha.train", "callbacks", "lightning", "pytorch_lightning",
                                            "transformers", "tensorboard", "matplotlib")), (path.name, name)


# Run in a fresh interpreter with the optional floors made unimportable (a meta-path finder refuses them).
_BLOCKED = """
import importlib.abc, sys
BLOCK = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCK:
            raise ImportError(f'{{name}} is blocked for this test')
sys.meta_path.insert(0, Block())
"""

_CORE = """
import tempfile, torch
import signaldrift, lora_alpha
from torch import nn
def base():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
model = base()
summary = lora_alpha.inject(model, ['0', '2'], rank=2, rule='lora-alpha')
with torch.no_grad():
    for layer in lora_alpha.lora_layers(model):
        layer.B.normal_()
x = torch.randn(3, 8)
want = model(x)
with tempfile.TemporaryDirectory() as d:
    lora_alpha.save_adapter(model, d)
    fresh = base()
    lora_alpha.load_adapter(fresh, d)
    assert torch.allclose(fresh(x), want, atol=1e-6)
spec = signaldrift.update_spectrum
bad = sorted(m for m in sys.modules if m.split('.')[0] in BLOCK)
assert not bad, bad
print('ok')
"""

_HF = """
from callbacks.hf import SignalDriftTrainerCallback
from callbacks import SignalDriftEngine
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))
assert not bad, bad
print('ok')
"""


def _run_blocked(blocked: tuple[str, ...], body: str) -> subprocess.CompletedProcess:
    code = _BLOCKED.format(blocked=blocked) + body
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_core_installs_alone_inject_save_load_without_the_frameworks():
    out = _run_blocked(("lightning", "pytorch_lightning", "transformers", "tensorboard", "matplotlib", "peft",
                        "scipy", "callbacks"), _CORE)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_the_hugging_face_callback_works_without_lightning():
    out = _run_blocked(("lightning", "pytorch_lightning"), _HF)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
