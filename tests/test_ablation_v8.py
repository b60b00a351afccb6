"""The v8 ablation table is rendered from the probe runs committed beside it."""

import importlib.util
import os

def _script(name: str):
    """A table script of training_scripts/, loaded as a module."""
    path = os.path.join(os.path.dirname(__file__), "..", "training_scripts", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_v8_table_is_a_fresh_render_of_its_runs():
    module = _script("ablation_v8_table")
    with open(os.path.join(module.HERE, "README.md"), encoding="utf-8") as f:
        assert f.read() == module.render()
    assert "| v8f | v7b capped at 4x, no horizon: the new default | plain | 95.56" in module.render()


def test_the_committed_long_run_table_is_a_fresh_render_of_its_runs():
    module = _script("long_run_table")
    with open(os.path.join(module.HERE, "README.md"), encoding="utf-8") as f:
        assert f.read() == module.render()
    assert "| `adamw-cos` |" in module.render() and "+0.0%" in module.render()


def test_the_committed_v11_table_is_a_fresh_render_of_its_runs():
    module = _script("ablation_v11_table")
    with open(os.path.join(module.HERE, "README.md"), encoding="utf-8") as f:
        assert f.read() == module.render()
    rows = {line.split(" | ")[0].strip("| "): line for line in module.decay_table()[2:]}
    assert set(rows) == {f"{w} ({'bpc' if w.startswith('charlm') else 'acc %'})" for w in module.WORKLOADS}
    # columns: workload, AdamW, fed none / planned / earned, plain none / planned / earned, the earned decay's steps
    frozen, long = rows["finetune-frozen (acc %)"].split(" | "), rows["charlm-long (bpc)"].split(" | ")
    # the planned decay cost the frozen head; the earned one never began there: the runs without a horizon
    assert "(-" in frozen[3] and "(-" in frozen[6] and frozen[4].endswith("(+0.00)") and frozen[7].endswith("(+0.00)")
    assert long[4].startswith("1.85") and "(+" in long[4] and "(+" in long[7]  # the long run gains on both paths


def test_the_committed_v12_table_is_a_fresh_render_of_its_runs():
    module = _script("ablation_v12_table")
    with open(os.path.join(module.HERE, "README.md"), encoding="utf-8") as f:
        assert f.read() == module.render()
    readings = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in module.readings_table()[2:]}
    # the start is scaled where the first signal share is under the floor, the fine-tunes whose body moves or is
    # frozen, and nowhere else
    scaled = {name for name, cells in readings.items() if float(cells[4].strip(" |")) > 1.0}
    assert scaled == {f"{w}/{p}" for w in ("finetune", "finetune-discr", "finetune-frozen") for p in ("fed", "plain")}
    assert all(float(readings[f"finetune-frozen/{p}"][4].strip(" |")) > 3.0 for p in ("fed", "plain"))
