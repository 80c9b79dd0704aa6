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
