"""Review notes for the mutants of `make mutation` that no test can detect, by narrow rules.

Reads benchmarks/results/mutation.json (written by benchmarks/mutation.py) and adds to
benchmarks/results/mutation_notes.json a note for each surviving mutant that one of the rules below
shows equivalent (each rule names its reason); hand-written notes already in the file are kept.
Then ``python benchmarks/mutation.py --reanalyse`` rewrites the report with the notes.
Every other survivor stays "not equivalent" until reviewed by hand.
"""
import json, re, sys
from pathlib import Path
R = Path(__file__).resolve().parent / "results"
r = json.loads((R / "mutation.json").read_text())
notes = json.loads((R / "mutation_notes.json").read_text()) if (R / "mutation_notes.json").exists() else {}
hand = set(notes)
def eq(name, why):
    if name not in hand:
        notes[name] = {"equivalent": True, "note": "Equivalent: " + why}
for s in r["survivors"]:
    n, d = s["mutant"], s["diff"]
    plus = "\n".join(l for l in d.splitlines() if l.startswith("+"))
    minus = "\n".join(l for l in d.splitlines() if l.startswith("-"))
    if "x_check_finite" in n and ("dtype=None" in plus or "bool(None)" in plus):
        eq(n, "the fused sum is only a fast path; when it is skipped or computed in the input's own dtype (where a float16 sum can overflow to inf) the exact per-tensor torch.isfinite check below decides, with the same result and message.")
    elif "x_check_scale" in n and ('"INF"' in plus or '"-INF"' in plus):
        eq(n, 'float("INF") == float("inf"): Python parses the name case-insensitively.')
    elif "x__round2" in n and "x < 0" in plus:
        eq(n, "_round2 is only called with positive numbers (a factor >= 0.1, or alpha times a positive factor): x == 0 never reaches it.")
    elif "_measure_before" in n and "loss_scale: float = 2.0" in plus:
        eq(n, "a default argument that is always overridden: before_step, the only caller, always passes loss_scale.")
    elif "_measure_before" in n and "grad_split(" in plus and "svd=spec.svd" in plus and ("None, B0" in plus or "A0, None" in plus or "v.scale, B0," in plus or "A0, top_k" in plus):
        eq(n, "with svd given, grad_split uses A0/B0 only for its finiteness check, and update_spectrum has already refused a non-finite snapshot (NonFiniteError) before grad_split is called: same results.")
    elif "x__exact" in n and "grad_split(" in plus and "svd=spec.svd" in plus and ("None, B0" in plus or "A0, None" in plus or "ly.scale, B0," in plus or "A0, top_k" in plus):
        eq(n, "with svd given, grad_split uses A0/B0 only for its finiteness check, and update_spectrum has already refused a non-finite snapshot (NonFiniteError) before grad_split is called: same results.")
    elif "after_step" in n and "it disappeared" in minus:
        eq(n, "unreachable branch: the pending layers are a subset of the views saved with them in before_step, so views.get(name) is never None.")
    elif "_warn_once(" in plus and '"variants"' in minus and ('"XXvariantsXX"' in plus or '"VARIANTS"' in plus or "_warn_once(None," in plus):
        eq(n, "the first argument is only the once-only key; any key distinct from the skip reasons (which are sentences) gives the same warnings.")
    elif re.search(r"\.sum\(\+1\)|norm\(dim=\+1\)", plus) and "batched" in n:
        eq(n, "the reduced tensor is 2-D (layers x r), so dim +1 and dim -1 are the same dimension.")
(R / "mutation_notes.json").write_text(json.dumps(notes, indent=1, sort_keys=True) + "\n")
left = [s for s in r["survivors"] if s["mutant"] not in notes]
print(f"{sum(1 for v in notes.values() if v.get('equivalent'))} equivalent; {len(left)} survivors without a note")
