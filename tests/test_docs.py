"""Every command the README and the docs show names a binary that exists and flags it defines.

Each `python -m MODULE ... --flag` in README.md, docs/*.md and the packages' READMEs is
checked against `python -m MODULE --helpfull`, so a renamed or removed flag fails CI
instead of a newcomer's first command.
"""

import collections
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "data_prep" / "README.md",
        REPO / "benchmarks" / "README.md"]
COMMAND = re.compile(r"python -m ((?:deocc_jax|data_prep|launch|benchmarks)\.[\w.]+)((?:\\\n|[^\n`])*)")
FLAG = re.compile(r"(?<![\w-])--([a-z][\w]*)")
# Options Apache Beam takes on data_prep.build's command line (passed through to Beam).
BEAM_OPTIONS = {"runner", "direct_num_workers", "direct_running_mode", "project", "region",
                "temp_location", "staging_location", "job_name", "setup_file", "worker_machine_type",
                "max_num_workers", "experiments", "sdk_container_image", "save_main_session",
                "sdk_location"}


def _documented() -> dict[str, set[str]]:
    flags = collections.defaultdict(set)
    for path in DOCS:
        for module, rest in COMMAND.findall(path.read_text()):
            flags[module].update(f for f in FLAG.findall(rest) if not f.startswith("config"))
    return flags


DOCUMENTED = _documented()


def test_the_docs_show_commands():
    assert {"deocc_jax.train", "deocc_jax.evaluate", "deocc_jax.export", "deocc_jax.infer",
            "deocc_jax.live", "deocc_jax.web", "data_prep.build", "launch.quickstart"} <= set(DOCUMENTED)


@pytest.mark.parametrize("module", sorted(DOCUMENTED))
def test_documented_flags_exist(module):
    proc = subprocess.run([sys.executable, "-m", module, "--helpfull"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # absl exits 1 after --helpfull
    assert "No module named" not in proc.stderr, proc.stderr[-2000:]  # python -m's own exit 1
    defined = set(re.findall(r"--(?:\[no\])?([a-z]\w*)", proc.stdout + proc.stderr))
    defined |= {f"no{f}" for f in defined}
    allowed = BEAM_OPTIONS if module in ("data_prep.build", "deocc_jax.infer_beam") else set()
    missing = sorted(DOCUMENTED[module] - defined - allowed - {"help", "helpfull"})
    assert not missing, f"the docs show flags that `python -m {module}` does not define: {missing}"


def test_readme_headline_table_is_generated_from_the_results():
    from benchmarks import headline
    text = (REPO / "README.md").read_text()
    assert headline.rewrite(text, headline.render()) == text, (
        "README.md's headline table differs from benchmarks/results and pretrained/*/metrics: "
        "run python -m benchmarks.headline")


def _readme_commands() -> list[str]:
    """The set-up block's commands: its lines that are not comments."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Set up", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readme_test_command():
    commands = _readme_commands()
    assert len(commands) == 2, f"the README's set-up block should hold two commands, found {commands}"
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1], (
        f".ci/run ends with {ci[-1]!r} but the README's test command is {commands[1]!r}")
