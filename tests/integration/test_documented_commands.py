"""Every command of README.md and docs/deployment.md, run as written through the real CLI.

The ```bash blocks of both files are extracted; :data:`SCENARIOS` says which test runs each
command, and :func:`test_every_documented_command_is_run_by_a_scenario` fails when a command is
added, changed or removed without the scenarios following. What a scenario may change, and only
that, is written next to the command:

* ``+ SMALL``: long jobs get ``--set`` overrides appended (the later ``--set`` wins), so that a run
  takes about a minute: 3 clients, 2 rounds, the logistic-regression model, one local epoch.
* host names (``server.example.org``, ``fl.example.org``) become ``127.0.0.1`` where a device
  connects, and port ``9092`` a free port; ``SHA256:...`` becomes the printed fingerprint;
  ``runs/<run>`` a run folder made earlier; ``exp.toml`` and ``local.csv`` are files the scenario
  writes (a small experiment and digits rows as CSV, see :func:`_write_experiment`).
* each host (dealer, server, device K, evaluator) gets its own ``HOME`` and working directory, so
  ``~/...`` paths mean what they mean on that host; ``scp -rp HOST:PATH`` copies between those
  folders with ``cp -rp``.
* ``ssh HOST 'CMD'`` runs CMD on that host (its HOME and working directory). The operator's
  workstation and the server are one machine here, so an SSH tunnel's two ends are the same
  loopback port: the test checks that the forwarded port is the server's control port as
  ``fedpriv server start`` printed it, and uses that port for ``9093``.
* placeholders in capitals (``STATE``, ``RUN_DIR``, ``FEDERATION``) and ``fedpriv monitor``'s
  default port (8765: a free port instead, ``--port``) are replaced as written next to the
  command.
* commands that would change the environment under test (``pip install``, ``git clone``, ``sudo
  apt-get install``, ``systemctl``, the benchmarks, which rewrite ``benchmarks/results/``) are
  checked instead: the Makefile recipe is the documented one (and installs nginx), nginx is where
  ``fedpriv server start`` looks for it, fedpriv's nginx uses no file of the system service, the
  benchmark scripts parse their arguments, ``benchmarks.tables`` runs.

Besides, every ``fedpriv`` command of README.md and docs/*.md parses with the real argument
parser (fast), so even the synopses cannot drift from the CLI.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.shared_data import shared_data

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", ROOT / "docs" / "deployment.md")
SMALL = [
    "rounds=2",
    "federation.num_clients=3",
    "train.model=logreg",
    "train.local_epochs=1",
]
FLOWER_NAMES = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-")


# ----------------------------------------------------------------------------- extraction
@dataclass(frozen=True)
class Command:
    doc: str
    text: str
    """The command as written, continuation lines joined, trailing comment removed."""
    host: str = ""
    """The prompt it is written with (``device$``), if any."""


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def commands(path: Path) -> list[Command]:
    out = []
    for block in _blocks(path):
        joined = re.sub(r"\\\n\s*", " ", block)
        for raw in joined.splitlines():
            line = raw.strip()
            if not line:
                continue
            host = ""
            m = re.match(r"^(\w+)\$\s+(.*)$", line)
            if m:
                host, line = m.group(1), m.group(2)
            if not line.startswith("#"):
                line = re.sub(r"\s+#\s.*$", "", line)
            out.append(Command(path.name, " ".join(line.split()), host))
    return out


def documented() -> list[Command]:
    return [c for doc in DOCS for c in commands(doc)]


# ----------------------------------------------------------------------------- running
def small(cmd: str, sets: list[str] = SMALL) -> str:
    return cmd + "".join(f" --set {s}" for s in sets)


@dataclass
class Host:
    """A machine of the walk-through: its own HOME and working directory."""

    name: str
    home: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def call(self, cmd: str, timeout: float = 600) -> tuple[int, str]:
        """Exit status and output (stdout, then stderr) of ``cmd`` on this host."""
        res = subprocess.run(
            ["bash", "-c", cmd],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return res.returncode, res.stdout + res.stderr

    def run(self, cmd: str, timeout: float = 600, ok: bool = True) -> str:
        rc, text = self.call(cmd, timeout)
        if ok:
            assert rc == 0, f"{self.name}$ {cmd}\nexit {rc}\n{text[-4000:]}"
        return text

    def start(self, cmd: str, log: str) -> Path:
        path = self.home / log
        with open(path, "ab") as fh:
            self.procs.append(
                subprocess.Popen(
                    ["bash", "-c", f"exec {cmd}"],
                    cwd=self.home,
                    env=self.env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        return path

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)


def wait_for_text(path: Path, text: str, timeout: float, alive: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = path.read_text(errors="replace") if path.exists() else ""
        if text in got:
            return
        assert alive.poll() is None, f"{path.name}: exited\n{got[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} in {path} within {timeout:.0f}s")


def marked(mark: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if f"FEDPRIV_TEST_MARK={mark}".encode() in (d / "environ").read_bytes():
                state = (d / "stat").read_text().rsplit(")", 1)[-1].split()[0]
                if state != "Z":
                    found.append(
                        d.name + " " + (d / "cmdline").read_bytes()[:100].decode(errors="replace")
                    )
        except OSError:
            continue
    return found


@contextlib.contextmanager
def machines(root: Path, names: list[str]) -> Iterator[dict[str, Host]]:
    """One Host per name, every process they start stopped afterwards (and checked)."""
    mark = uuid.uuid4().hex
    hosts = {}
    for n in names:
        home = root / n
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HOME": str(home), "FEDPRIV_TEST_MARK": mark, "PYTHONUNBUFFERED": "1"}
        env.pop("FEDPRIV_HOME", None)  # each host's ~/.fedpriv
        hosts[n] = Host(n, home, env)
    try:
        yield hosts
    finally:
        for h in hosts.values():
            h.stop()
        deadline = time.monotonic() + 20
        while (left := marked(mark)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for line in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        assert not left, f"processes left behind: {left}"


def assert_readable(text: str) -> None:
    """What a researcher reads: nothing cut, no third-party banners, DEBUG lines or warnings."""
    assert "…" not in text, text
    for noise in ("DEPRECATED", "DEBUG", "FutureWarning", "UserWarning", "Traceback"):
        assert noise not in text, f"{noise} in the output:\n{text[-3000:]}"


# ----------------------------------------------------------------------------- data for devices
def _write_experiment(folder: Path, rounds: int) -> tuple[Path, list[Path]]:
    """``exp.toml`` (3 clients on CSV digits, logistic regression, fixed noise) with its sample
    CSV, and three device CSVs with the same columns."""
    from sklearn.datasets import load_digits

    d = load_digits()
    header = ["label", *(f"px{i}" for i in range(d.data.shape[1]))]
    rows = [[int(y), *(int(v) for v in x)] for x, y in zip(d.data, d.target, strict=True)]

    def write(path: Path, part: list[list[int]]) -> Path:
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(part)
        return path

    sample = write(folder / "sample.csv", rows)
    devices = [write(folder / f"device-{k}.csv", rows[k::3]) for k in range(3)]
    exp = folder / "exp.toml"
    exp.write_text(
        f"""name = "exp"
rounds = {rounds}

[data]
dataset = "csv:{sample}"
partitioner = "iid"

[federation]
num_clients = 3
fraction_evaluate = 0.0
round_timeout_s = 300

[train]
model = "logreg"
local_epochs = 1

[privacy]
noise_multiplier = 1.0
accountant = "rdp"
max_epsilon = 50.0
"""
    )
    return exp, devices


# ============================================================================= fast checks
SCENARIOS: dict[str, str] = {}
"""documented command -> the test that runs it (filled by :func:`runs`)."""


def runs(test: str, *cmds: str) -> None:
    for c in cmds:
        SCENARIOS[c] = test


runs(
    "test_make_targets_are_the_documented_ones",
    "make simulate",
    "make test",
)
runs(
    "test_readme_simulations_and_reports",
    "fedpriv simulate",
    "fedpriv simulate --config simulations/default.toml --set rounds=10 --set "
    "privacy.target_epsilon=3 --out runs/eps3",
    "fedpriv simulate --set encryption.scheme=ckks",
    "fedpriv simulate --set privacy.mode=off --set encryption.scheme=off",
    "fedpriv report show runs/<run>",
    "fedpriv report verify runs/<run>",
    "fedpriv report build runs/<run> --baseline runs/<non-private run>",
)
runs(
    "test_readme_data_schemas",
    "fedpriv data schema infer digits --out digits-schema.json",
    "fedpriv data check digits --schema digits-schema.json",
    "fedpriv data check mnist:../shared/data/mnist --schema digits-schema.json",
    "fedpriv simulate --set data.schema=digits-schema.json --set rounds=2",
)
runs(
    "test_readme_monitor",
    "fedpriv simulate --monitor",
    "fedpriv monitor runs",
)
runs(
    "test_readme_deployment",
    "fedpriv keys init --nodes 3 --out fed --config exp.toml --server-host server.example.org",
    "fedpriv server start --bundle fed/server --address 0.0.0.0:9092",
    "fedpriv client start --superlink server.example.org:9092 --bundle fed/clients/client-0 "
    "--data local.csv",
    "fedpriv run --superlink 127.0.0.1:9092 --bundle fed/server --config exp.toml",
)
runs(
    "test_readme_distributed",
    "fedpriv simulate --config simulations/mnist/distributed-5k.toml",
    "fedpriv central --config simulations/mnist/distributed-5k.toml",
)
runs(
    "test_readme_sweep",
    "fedpriv sweep run simulations/mnist/sweep.toml --report --docs build/issue6 --notes "
    "simulations/mnist/NOTES.md",
)
runs(
    "test_readme_benchmarks",
    "python -m benchmarks.he",
    "python -m benchmarks.dp",
    "python -m benchmarks.round",
    "python -m benchmarks.scale",
    "python -m benchmarks.edge",
    "python -m benchmarks.distributed_round",
    "python -m benchmarks.distributed",
    "python -m benchmarks.tables",
)
runs(
    "test_readme_flwr_run",
    "flwr run . --stream",
    "fedpriv simulate --engine flwr",
)
RUN = "fedpriv run --bundle ~/fedpriv-server --config exp.toml --out ~/runs/exp1"
SSH_RUN = f"ssh operator@fl.example.org '{RUN}'"
TUNNEL = "ssh -N -L 9093:127.0.0.1:9093 operator@fl.example.org &"
COPY_FLWR_HOME = "scp -rp operator@fl.example.org:.fedpriv/server-FEDERATION/flwr-home ~/fl-flwr"
COPY_CA = "scp operator@fl.example.org:fedpriv-server/ca.crt ~/fl-flwr/ca.crt"
SED_CA = (
    'sed -i "s|^root-certificates = .*|root-certificates = \\"$HOME/fl-flwr/ca.crt\\"|" '
    "~/fl-flwr/config.toml"
)
FLWR_LS = "FLWR_HOME=~/fl-flwr flwr ls fedpriv"
LEDGER_HEAD = "fedpriv client ledger-head --state-dir STATE --out client-0.head.json"
VERIFY_HEAD = (
    "fedpriv report verify RUN_DIR --registry fed/server/identities.json "
    "--client-head client-0.head.json"
)
THRESHOLD_INIT = (
    "fedpriv keys init --nodes 3 --threshold 2 --sealed --out fed --config exp.toml "
    "--server-host fl.example.org"
)
runs(
    "test_deployment_guide",
    "git clone <this repository> fedpriv && cd fedpriv",
    "python3 -m pip install torch==2.13.0 -e .",
    "fedpriv --help",
    "sudo apt-get install -y nginx",
    "sudo systemctl disable --now nginx",
    "fedpriv keys init --nodes 3 --out fed --config exp.toml --server-host fl.example.org",
    "scp -rp fed/server operator@fl.example.org:fedpriv-server",
    "scp -rp fed/clients/client-0 device0:fedpriv-bundle",
    "fedpriv server start --bundle ~/fedpriv-server --address 0.0.0.0:9092 "
    "--dealer-fingerprint SHA256:...",
    SSH_RUN,
    TUNNEL,
    COPY_FLWR_HOME,
    COPY_CA,
    SED_CA,
    FLWR_LS,
    "fedpriv client start --superlink fl.example.org:9092 --bundle ~/fedpriv-bundle "
    "--data ~/my-data.csv --state-dir ~/.fedpriv/state --dealer-fingerprint SHA256:...",
    LEDGER_HEAD,
    VERIFY_HEAD,
    RUN,
    "fedpriv run --resume --superlink 127.0.0.1:9092 --bundle ~/fedpriv-server --out ~/runs/exp1",
    "scp -rp fl.example.org:runs/exp1 exp1",
    "fedpriv client evaluate --run-dir exp1 --bundle ~/fedpriv-bundle",
    "fedpriv report build exp1 && fedpriv report show exp1",
    "fedpriv keys node-key --out ~/fedpriv-node",
    "fedpriv keys add-node --out fed --public-key node.pub --sealed",
    "# copy fed/clients/client-3 to the device, fed/server to the server host",
    "fedpriv server register --bundle ~/fedpriv-server",
    "fedpriv client start --superlink ... --bundle ~/fedpriv-bundle --node-key "
    "~/fedpriv-node/node.key --data ...",
    THRESHOLD_INIT,
)


def test_every_documented_command_is_run_by_a_scenario() -> None:
    found = {c.text for c in documented()}
    missing = sorted(found - set(SCENARIOS))
    stale = sorted(set(SCENARIOS) - found)
    assert not missing, "documented but run by no test (add it to SCENARIOS):\n" + "\n".join(
        missing
    )
    assert not stale, "run by a test but no longer documented:\n" + "\n".join(stale)


def _placeholders(argv: list[str]) -> list[str]:
    out = []
    for a in argv:
        a = a.strip("[]")
        if a in ("", "\\"):
            continue
        out.append(a)
    return out


def test_every_documented_fedpriv_command_parses() -> None:
    """README.md and docs/*.md: subcommands and options exist and take the values shown."""
    from fedpriv.cli.main import build_parser

    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    seen = 0
    for doc in docs:
        for c in commands(doc):
            for part in c.text.split("&&"):
                argv = shlex.split(re.sub(r"<[^>]*>", "X", part.strip()))
                if not argv or argv[0] != "fedpriv":
                    continue
                try:
                    build_parser().parse_args(_placeholders(argv[1:]))
                except SystemExit as exc:
                    if exc.code:
                        pytest.fail(f"{doc.name}: does not parse: {c.text}")
                seen += 1
    assert seen >= 30


def _make_n(target: str) -> subprocess.CompletedProcess[str]:
    """``make -n TARGET`` as a user's shell runs it: this suite itself runs under ``make test``,
    whose MAKELEVEL/MAKEFLAGS would make the inner make print "Entering directory" lines."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    return subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )


def test_make_targets_are_the_documented_ones() -> None:
    """`make simulate` and `make test` are dry-run (`make -n`): running them would reinstall
    the package under test, and `make test` is the suite this test is part of. The recipes must
    be what README says: pip install of the CPU torch wheel and the package, then the default
    run; dev tools, lint, format check, types, every test not marked slow."""
    sim = _make_n("simulate")
    assert sim.returncode == 0, sim.stderr
    assert re.search(r'pip install -q "torch==2\.13\.0" -e \.\n', sim.stdout), sim.stdout
    assert sim.stdout.rstrip().endswith("fedpriv simulate"), sim.stdout
    test = _make_n("test")
    assert test.returncode == 0, test.stderr
    for step in (
        '-e ".[dev]"',
        "ruff check",
        "ruff format --check",
        "mypy",
        'pytest -m "not slow"',
    ):
        assert step in test.stdout, (step, test.stdout)
    readme = (ROOT / "README.md").read_text()
    assert "`make simulate` is `pip install torch==2.13.0 -e . && fedpriv simulate`" in readme


# ============================================================================= the runs (slow)
@pytest.mark.slow
@pytest.mark.e2e
def test_readme_simulations_and_reports(tmp_path: Path) -> None:
    """README "Running experiments" and "Privacy report", in a user's working directory."""
    with machines(tmp_path, ["user"]) as hosts:
        user = hosts["user"]
        (user.home / "simulations").symlink_to(ROOT / "simulations")
        out = user.run(small("fedpriv simulate"))  # + SMALL
        assert_readable(out)
        assert re.search(r"round 2/2 .*\n", out) and "final held-out accuracy" in out, out
        assert max(map(len, out.splitlines())) <= 80, out
        runs_dir = user.home / "runs"
        assert len(list(runs_dir.glob("*-default"))) == 1  # runs/<timestamp>-default
        out = user.run(
            small(  # + SMALL: rounds=2 after rounds=10
                "fedpriv simulate --config simulations/default.toml --set rounds=10 --set "
                "privacy.target_epsilon=3 --out runs/eps3"
            )
        )
        assert_readable(out)
        cfg = json.loads((runs_dir / "eps3" / "config.json").read_text())
        assert cfg["privacy"]["target_epsilon"] == 3.0 and cfg["rounds"] == 2
        m = json.loads((runs_dir / "eps3" / "metrics.json").read_text())
        assert all(c["epsilon"] <= 3.0 + 1e-6 for c in m["rounds"][-1]["clients"].values())
        assert_readable(user.run(small("fedpriv simulate --set encryption.scheme=ckks")))
        before = set(runs_dir.iterdir())
        assert_readable(
            user.run(small("fedpriv simulate --set privacy.mode=off --set encryption.scheme=off"))
        )
        (plain,) = set(runs_dir.iterdir()) - before
        # runs/<run> = runs/eps3, runs/<non-private run> = the run just made
        shown = user.run("fedpriv report show runs/eps3")
        assert_readable(shown)
        assert "client-0" in shown, shown
        # every line fits 80 columns, but the command to copy, which is never broken
        assert all(len(x) <= 80 for x in shown.splitlines() if not x.startswith("  fedpriv ")), (
            shown
        )
        assert "VERIFIED" in user.run("fedpriv report verify runs/eps3")
        user.run(f"fedpriv report build runs/eps3 --baseline runs/{plain.name}")
        report = json.loads((runs_dir / "eps3" / "privacy_report.json").read_text())
        assert report["utility"]["baseline"]["final_accuracy"] is not None


@pytest.mark.slow
@pytest.mark.e2e
def test_readme_flwr_run(tmp_path: Path) -> None:
    """README "`flwr run`": `flwr run . --stream` in the project root + ``--run-config
    'fedpriv-config="small.toml"'`` (SMALL as a file; Flower's default federation of 2
    SuperNodes sizes it), on a private FLWR_HOME and ports; then `fedpriv simulate --engine
    flwr` + SMALL."""
    from fedpriv.deploy.processes import free_port
    from fedpriv.report import verify_run
    from fedpriv.runs.flwr_cli import stop_processes_matching

    small_toml = tmp_path / "small.toml"
    small_toml.write_text(
        'name = "small"\nrounds = 2\n[train]\nmodel = "logreg"\nlocal_epochs = 1\n'
    )
    with machines(tmp_path, ["user"]) as hosts:
        user = hosts["user"]
        flwr_home = tmp_path / "flwr-home"
        env = dict(user.env)
        env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)  # as a new user has it
        env |= {
            "FLWR_HOME": str(flwr_home),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        }
        project = Host("project", ROOT, env)
        try:
            text = project.run(
                f"flwr run . --stream --run-config 'fedpriv-config=\"{small_toml}\"'"
            )
        finally:
            stop_processes_matching(str(flwr_home))
        assert "fedpriv: no keys-dir given: simulation keys dealt into" in text, text[-3000:]
        found = re.search(r"fedpriv: run folder (\S+)", text)
        assert found and "fedpriv: run complete: 2 rounds" in text, text[-3000:]
        run_dir = Path(found.group(1))
        assert run_dir.is_relative_to(user.home / ".fedpriv" / "runs")
        m = json.loads((run_dir / "metrics.json").read_text())
        assert m["engine"] == "flwr run" and m["rounds"][-1]["heldout_accuracy"] > 0.3
        report = json.loads((run_dir / "privacy_report.json").read_text())
        dealer = next(p for p in report["roles"]["parties"] if p["role"] == "key dealer")
        assert "the ServerApp of `flwr run`" in dealer["who"]
        os.environ["FEDPRIV_HOME"], old = str(user.home / ".fedpriv"), os.environ["FEDPRIV_HOME"]
        try:
            assert verify_run(run_dir).ok
        finally:
            os.environ["FEDPRIV_HOME"] = old

        out = user.run(small("fedpriv simulate --engine flwr"), timeout=900)  # + SMALL
        assert_readable(out)
        (run,) = (user.home / "runs").glob("*-default")
        assert json.loads((run / "metrics.json").read_text())["engine"] == "flwr"


@pytest.mark.slow
@pytest.mark.e2e
def test_readme_sweep(tmp_path: Path) -> None:
    """README "Experiments on MNIST" + ``--only record-eps3/iid/seed0 --set rounds=1 --set
    federation.num_clients=3 --set data.max_samples=600 --set data.dataset=mnist:FOLDER``
    (one combination, small; FOLDER is the shared MNIST copy, pointed to as README says)."""
    mnist = shared_data("mnist")
    with machines(tmp_path, ["user"]) as hosts:
        user = hosts["user"]
        (user.home / "simulations").symlink_to(ROOT / "simulations")
        out = user.run(
            "fedpriv sweep run simulations/mnist/sweep.toml --report --docs build/issue6 --notes "
            "simulations/mnist/NOTES.md --only record-eps3/iid/seed0 --set rounds=1 --set "
            f"federation.num_clients=3 --set data.max_samples=600 --set data.dataset=mnist:{mnist}",
            timeout=1200,
        )
        assert "sweep: 1 run, 0 already done, 0 failed" in out, out
        assert (user.home / "build" / "issue6" / "results.md").exists()
        assert not (user.home / "docs").exists()  # the distributed-DP page is not overwritten


@pytest.mark.slow
@pytest.mark.e2e
def test_readme_distributed(tmp_path: Path) -> None:
    """README "Distributed DP" + ``--set rounds=2 --set federation.num_clients=3 --set
    data.max_samples=600 --set train.model=logreg --set simulation.eval_every=1 --set
    data.dataset=mnist:FOLDER`` (small; FOLDER is the shared MNIST copy). The distributed run and
    its central counterpart both train and state the same central epsilon budget."""
    mnist = shared_data("mnist")
    sets = [
        "rounds=2",
        "federation.num_clients=3",
        "data.max_samples=600",
        "train.model=logreg",
        "simulation.eval_every=1",
        f"data.dataset=mnist:{mnist}",
    ]
    with machines(tmp_path, ["user"]) as hosts:
        user = hosts["user"]
        (user.home / "simulations").symlink_to(ROOT / "simulations")
        out = user.run(
            small("fedpriv simulate --config simulations/mnist/distributed-5k.toml", sets)
            + " --out runs/dist",
            timeout=900,
        )
        assert_readable(out)
        assert re.search(r"round 2/2 .*\n", out) and "final held-out accuracy" in out, out
        m = json.loads((user.home / "runs" / "dist" / "metrics.json").read_text())
        assert m["privacy_mode"] == "distributed" and m["distributed"]["k_min"] == 3
        assert m["distributed_replay"]["mismatches"] == []
        out = user.run(
            small("fedpriv central --config simulations/mnist/distributed-5k.toml", sets),
            timeout=900,
        )
        res = json.loads(out.strip().splitlines()[-1])
        assert res["steps"] == 2 and res["evaluated_on"] == "test", res
        assert res["epsilon"] == pytest.approx(3.0, rel=0.05), res


@pytest.mark.slow
def test_readme_benchmarks() -> None:
    """README "Benchmarks": each script takes minutes to hours and rewrites
    benchmarks/results/, so it is run with --help (imports and arguments); benchmarks.tables,
    which only reads, runs as written."""
    for name in ("he", "dp", "round", "scale", "edge", "distributed_round", "distributed"):
        res = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{name}", "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0 and "usage:" in res.stdout, (name, res.stderr[-2000:])
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.tables"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0 and "|" in res.stdout, res.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.e2e
def test_readme_data_schemas(tmp_path: Path) -> None:
    """README "Data schemas", in a user's working directory next to which ``../shared`` is the
    shared data folder (linked to the one ``tests/shared_data.py`` finds); the simulation
    + SMALL."""
    data_root = shared_data("mnist").parent
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data_root)
    with machines(tmp_path, ["user"]) as hosts:
        user = hosts["user"]
        out = user.run("fedpriv data schema infer digits --out digits-schema.json")
        assert_readable(out)
        assert "images 1x8x8, pixels in [0, 16]" in out, out
        schema = json.loads((user.home / "digits-schema.json").read_text())
        assert schema["label"]["values"] == [str(i) for i in range(10)], schema["label"]
        out = user.run("fedpriv data check digits --schema digits-schema.json")  # exit 0
        assert "digits: 1797 rows match digits-schema.json" in out, out
        rc, out = user.call(
            "fedpriv data check mnist:../shared/data/mnist --schema digits-schema.json"
        )
        assert rc == 3, out  # exit 3: image-shape, pixel-range
        assert "2 checks failed (image-shape, pixel-range)" in out and "Traceback" not in out, out
        out = user.run(
            small("fedpriv simulate --set data.schema=digits-schema.json --set rounds=2")
        )  # + SMALL
        assert_readable(out)
        (run,) = (user.home / "runs").glob("*-default")
        cfg = json.loads((run / "config.json").read_text())
        assert Path(cfg["data"]["schema"]).resolve() == (user.home / "digits-schema.json").resolve()
        rounds = json.loads((run / "metrics.json").read_text())["rounds"]
        assert [(r["accepted"], r["refused"]) for r in rounds] == [(3, 0), (3, 0)], rounds


def _get(url: str) -> str:
    """GET ``url`` directly (no proxy): the body as text."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as r:
        assert r.status == 200, (url, r.status)
        return str(r.read().decode("utf-8"))


@pytest.mark.slow
@pytest.mark.e2e
def test_readme_monitor(tmp_path: Path) -> None:
    """README "Watching a run live", in a user's working directory: ``fedpriv simulate
    --monitor`` + SMALL prints the URL, the page and its data answer while the run goes, and
    nothing answers once the run ended. ``fedpriv monitor runs`` + ``--port P`` (a free port
    for the default 8765, which another program may hold) then follows the run just made;
    Ctrl-C (SIGINT) stops it cleanly."""
    import urllib.error

    from fedpriv.cli.main import build_parser
    from fedpriv.deploy.processes import free_port

    assert build_parser().parse_args(["monitor", "runs"]).port == 8765  # the only substitution
    with machines(tmp_path, ["user"]) as hosts:
        user = hosts["user"]
        log = user.start(small("fedpriv simulate --monitor"), "simulate.out")  # + SMALL
        sim = user.procs[-1]
        wait_for_text(log, "monitor: http://", 300, sim)
        found = re.search(
            r"monitor: (http://127\.0\.0\.1:\d+/)  \(watching (\S+);", log.read_text()
        )
        assert found, log.read_text()
        url, watched = found.group(1), found.group(2)
        assert "<html" in _get(url).lower()
        snap = json.loads(_get(url + "api/snapshot"))
        assert sim.poll() is None, "the run ended before the page was read"  # while it runs
        assert snap["watching"] == watched, snap["watching"]
        assert sim.wait(900) == 0, log.read_text()[-3000:]
        out = log.read_text()
        assert_readable(out)
        assert "final held-out accuracy" in out, out
        with pytest.raises(urllib.error.URLError):  # stopped with the run
            _get(url)
        (run,) = (user.home / "runs").glob("*-default")
        assert (user.home / watched).resolve() == run.resolve(), (watched, run)

        port = free_port()
        mlog = user.start(f"fedpriv monitor runs --port {port}", "monitor.out")
        mon = user.procs[-1]
        wait_for_text(mlog, f"fedpriv monitor: http://127.0.0.1:{port}/", 120, mon)
        assert "<html" in _get(f"http://127.0.0.1:{port}/").lower()
        snap = json.loads(_get(f"http://127.0.0.1:{port}/api/snapshot"))
        # the folder as the user named it: relative to the monitor's working directory
        assert (user.home / snap["run"]["folder"]).resolve() == run.resolve(), snap["run"]
        assert snap["run"]["rounds_done"] == 2 and snap["run"]["status"] == "complete", snap["run"]
        os.killpg(mon.pid, signal.SIGINT)  # Ctrl-C in its terminal
        assert mon.wait(60) == 0, mlog.read_text()
        out = mlog.read_text()
        assert "monitor stopped" in out and "Traceback" not in out, out


def _port_in(cmd: str, port: int) -> str:
    return cmd.replace(":9092", f":{port}")


@pytest.mark.slow
@pytest.mark.e2e
def test_readme_deployment(short_tmp: Path) -> None:
    """README "Deployment": dealer and server share a folder (``fed/``), each device has its
    own folder with ``fed`` linked in and its ``local.csv``; the client line runs once per
    device with its bundle (client-0, -1, -2); exp.toml: 3 clients, 1 round."""
    from fedpriv.deploy.processes import free_port

    port = free_port()
    with machines(short_tmp, ["server", "dev0", "dev1", "dev2"]) as hosts:
        server = hosts["server"]
        _, devices = _write_experiment(server.home, rounds=1)
        server.run(
            "fedpriv keys init --nodes 3 --out fed --config exp.toml --server-host "
            "server.example.org"
        )
        log = server.start(
            _port_in("fedpriv server start --bundle fed/server --address 0.0.0.0:9092", port),
            "server.out",
        )
        wait_for_text(log, "SuperLink ready", 120, server.procs[-1])
        for k in range(3):
            dev = hosts[f"dev{k}"]
            (dev.home / "fed").symlink_to(server.home / "fed")
            shutil.copy(devices[k], dev.home / "local.csv")
            cmd = (
                "fedpriv client start --superlink server.example.org:9092 --bundle "
                f"fed/clients/client-{k} --data local.csv"
            ).replace("server.example.org:9092", f"127.0.0.1:{port}")
            dlog = dev.start(cmd, "client.out")
            wait_for_text(dlog, "connected to", 120, dev.procs[-1])
        out = server.run(
            _port_in(
                "fedpriv run --superlink 127.0.0.1:9092 --bundle fed/server --config exp.toml", port
            ),
            timeout=900,
        )
        assert "finished:completed" in out and "1 rounds" in out, out


def _server_started(log: Path, home: Path) -> tuple[str, Path]:
    """The control port and the state folder ``fedpriv server start`` printed."""
    text = log.read_text()
    control = re.search(r"Control API on 127\.0\.0\.1:(\d+) \(loopback", text)
    state = re.search(r"^  state (\S+), logs ", text, flags=re.M)
    assert control and state, text
    folder = Path(state.group(1))
    assert folder.parent == (home / ".fedpriv").resolve(), folder  # the default state folder
    return control.group(1), folder


def _nginx_is_fedprivs_own(state: Path) -> None:
    """The nginx of ``fedpriv server start``: its prefix and configuration in the state folder,
    no file of the system's nginx (``/etc/nginx``, its service)."""
    pid = json.loads((state / "superlink.json").read_text())["pids"]["nginx"]
    # nginx rewrites its process title to "nginx: master process ARGV..."
    title = " ".join(a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
    argv = shlex.split(title.removeprefix("nginx: master process "))
    assert Path(argv[0]).name == "nginx", argv
    assert argv[argv.index("-p") + 1] == str(state / "proxy"), argv
    assert argv[argv.index("-c") + 1] == str(state / "proxy" / "nginx.conf"), argv
    assert "/etc/nginx" not in (state / "proxy" / "nginx.conf").read_text()


def _drop_last_round(run: Path) -> None:
    """The attack of ``tests/e2e/test_device_attacks.py``: the last round's lines removed from
    the ledger and its hash chain rebuilt (the report is rebuilt and signed after this)."""
    from fedpriv.privacy import HashChainWriter, read_chain

    ledger = run / "privacy_ledger.jsonl"
    entries = read_chain(ledger)
    last = max(e["round"] for e in entries)
    ledger.unlink()
    w = HashChainWriter(ledger)
    for e in entries:
        if e["round"] != last:
            w.append({k: v for k, v in e.items() if k not in ("seq", "prev", "hash")})


def _check_threshold_bundles(fed: Path) -> None:
    """``keys init --threshold 2 --sealed``: each node's share is sealed to its node key in the
    server bundle's ``relay/`` and opens, with that node's key only, to the share the dealer's
    map gives it; no file of the dealer, the server or a client bundle holds a share in the
    clear, and the server bundle holds no mask key either."""
    from fedpriv.crypto.codec import load_params_file
    from fedpriv.crypto.tcustody import ThresholdPublic, unpack_node_keys
    from fedpriv.crypto.threshold import KeyShare
    from fedpriv.deploy.bundle import verify_bundle
    from fedpriv.deploy.pki import load_dealer_public, load_node_private
    from fedpriv.deploy.seal import SealContext, open_sealed
    from tests.security.test_threshold_deploy_keys import _share_windows

    def files(root: Path) -> list[Path]:
        return [f for f in root.rglob("*") if f.is_file()]

    secrets = {"he_share.fpkey", "mask.key", "secret.key", "he_secret.key"}
    server = verify_bundle(fed / "server", kind="server")
    assert server.meta["key_custody"] == "threshold"
    assert not {f.name for f in files(fed / "server")} & secrets
    assert not {f.name for f in files(fed / "dealer")} & (secrets - {"mask.key"})
    shares, masks = [], set()
    for k in range(3):
        cid = f"client-{k}"
        b = verify_bundle(fed / "clients" / cid, kind="client")
        assert not {f.name for f in files(b.root)} & secrets, cid  # sealed: only the node key
        pub = ThresholdPublic.load(b.root)
        assert (pub.params.threshold, pub.params.parties) == (2, 3)
        plain = open_sealed(
            (fed / "server" / "relay" / f"{cid}.sealed").read_bytes(),
            load_node_private(b.path("node.key").read_bytes()),
            load_dealer_public(b.path("dealer.pub").read_bytes()),
            SealContext(b.federation, cid, load_params_file(b.path("params.json")).fingerprint()),
        )
        share_bytes, mask = unpack_node_keys(plain)
        share = KeyShare.from_bytes(share_bytes, pub.params)
        assert share.index == pub.index_of(cid), cid
        shares.append(share)
        masks.add(mask)
    assert sorted(s.index for s in shares) == [1, 2, 3] and len(masks) == 1
    windows = [w for s in shares for w in _share_windows(s)]
    for f in files(fed):
        data = f.read_bytes()
        assert not any(w in data for w in windows), f"{f} holds a key share"
        if f.is_relative_to(fed / "server"):
            assert not any(m in data for m in masks), f"{f} holds the mask key"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a short path: the server's default state folder is under its
    ``HOME`` and holds the SuperLink's unix socket, whose path may be 107 bytes at most (a user's
    ``~/.fedpriv/server-FEDERATION`` is far shorter than pytest's ``tmp_path``)."""
    root = Path(tempfile.mkdtemp(prefix="fp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.e2e
def test_deployment_guide(short_tmp: Path) -> None:
    """docs/deployment.md: sections 0 to 6, the control plane from elsewhere, ledger heads, the
    sealed node-key walk-through and threshold keys, on one deployment.

    Hosts: dealer (``fed/``, ``exp.toml``), server (``~/fedpriv-server``, ``exp.toml``), devices
    0-2 (``~/fedpriv-bundle``, ``~/my-data.csv``; "and so on, one per device" = 1 and 2 too),
    device 3 (joins with its own node key), evaluator and auditor = device 0 (holds ``exp1``
    after the copy, builds and signs its report, exports its ledger head and verifies the run
    with the dealer's registry), the operator's workstation (``~/fl-flwr``), and a second
    dealer for the threshold federation. exp.toml: 3 clients, 2 rounds.
    Section 0 installs nothing: ``git clone`` has a placeholder and pip would reinstall the
    package under test; the pip line must be the Makefile's recipe, and ``fedpriv --help`` runs.
    nginx is not installed by the test (``sudo apt-get``): it must be where ``fedpriv server
    start`` looks, and ``make install-dev`` installs it with that command. ``systemctl disable
    --now nginx`` is optional and there is no systemd in a test: what it relies on is checked
    instead (the server's nginx uses its own prefix and configuration, no system file).
    """
    from fedpriv.deploy.processes import free_port
    from fedpriv.deploy.proxy import nginx_exe

    make = (ROOT / "Makefile").read_text()
    assert "TORCH ?= torch==2.13.0" in make and '-m pip install -q "$(TORCH)" -e .' in make
    # sudo apt-get install -y nginx
    nginx_exe()
    dev = _make_n("install-dev")
    assert dev.returncode == 0 and "apt-get install -y nginx" in dev.stdout, dev.stdout
    port = free_port()
    names = ["dealer", "server", "device0", "device1", "device2", "device3", "operator", "td"]
    with machines(short_tmp, names) as hosts:
        dealer, server, op = hosts["dealer"], hosts["server"], hosts["operator"]
        assert "usage: fedpriv" in dealer.run("fedpriv --help")
        exp, data = _write_experiment(dealer.home, rounds=2)
        shutil.copy(exp, server.home / "exp.toml")
        out = dealer.run(
            "fedpriv keys init --nodes 3 --out fed --config exp.toml --server-host fl.example.org"
        )
        fingerprint = re.search(r"dealer key fingerprint (SHA256:\S+)", out)
        assert fingerprint, out
        fp = fingerprint.group(1)
        # scp -rp fed/server operator@fl.example.org:fedpriv-server
        dealer.run(f"cp -rp fed/server {server.home}/fedpriv-server")
        for k in range(3):  # scp -rp fed/clients/client-K deviceK:fedpriv-bundle
            dealer.run(f"cp -rp fed/clients/client-{k} {hosts[f'device{k}'].home}/fedpriv-bundle")
            shutil.copy(data[k], hosts[f"device{k}"].home / "my-data.csv")
        log = server.start(
            _port_in(
                "fedpriv server start --bundle ~/fedpriv-server --address 0.0.0.0:9092 "
                f"--dealer-fingerprint {fp}",
                port,
            ),
            "server.out",
        )
        wait_for_text(log, "SuperLink ready", 120, server.procs[-1])
        control_port, state = _server_started(log, server.home)
        _nginx_is_fedprivs_own(state)  # sudo systemctl disable --now nginx: not applicable
        for k in range(3):
            dev = hosts[f"device{k}"]
            dlog = dev.start(
                f"fedpriv client start --superlink 127.0.0.1:{port} --bundle ~/fedpriv-bundle "
                f"--data ~/my-data.csv --state-dir ~/.fedpriv/state --dealer-fingerprint {fp}",
                "client.out",
            )
            wait_for_text(dlog, "connected to", 120, dev.procs[-1])

        # ssh operator@fl.example.org 'CMD' runs CMD on the server host: section 5's `fedpriv
        # run`, without --superlink (the server's recorded Control API address and token)
        assert shlex.split(SSH_RUN)[2:] == [RUN]
        out = server.run(RUN, timeout=900)
        assert "finished:completed" in out and "2 rounds" in out, out
        run_id = re.search(r"run (\d+) finished:completed", out)
        assert run_id, out

        # Flower's CLI on the operator's workstation. TUNNEL: the workstation is this machine,
        # so its local end is the server's own control port (9093 = the port printed above).
        tunnel = re.fullmatch(r"ssh -N -L (\d+):127\.0\.0\.1:(\d+) \S+ &", TUNNEL)
        assert tunnel and tunnel.group(1) == tunnel.group(2), TUNNEL  # the same port both ends
        # COPY_FLWR_HOME, COPY_CA: scp -> cp from the server's folder; FEDERATION is the name
        # of the state folder `fedpriv server start` printed
        federation = state.name.removeprefix("server-")
        op.run(f"cp -rp {server.home}/.fedpriv/server-{federation}/flwr-home ~/fl-flwr")
        op.run(f"cp {server.home}/fedpriv-server/ca.crt ~/fl-flwr/ca.crt")
        conf = op.home / "fl-flwr" / "config.toml"
        assert f'address = "127.0.0.1:{control_port}"' in conf.read_text(), conf.read_text()
        op.run(SED_CA)
        assert f'root-certificates = "{op.home}/fl-flwr/ca.crt"' in conf.read_text()
        assert str(server.home) not in conf.read_text()  # nothing left on the server's side
        out = op.run(FLWR_LS)
        assert run_id.group(1) in out and "finished" in out, out

        out = server.run(
            _port_in(
                "fedpriv run --resume --superlink 127.0.0.1:9092 --bundle ~/fedpriv-server "
                "--out ~/runs/exp1",
                port,
            ),
            timeout=600,
        )
        assert "finished:completed" in out and "(resumed)" in out, out

        ev = hosts["device0"]
        ev.run(f"cp -rp {server.home}/runs/exp1 exp1")  # scp -rp fl.example.org:runs/exp1 exp1
        out = ev.run("fedpriv client evaluate --run-dir exp1 --bundle ~/fedpriv-bundle")
        assert "round 2: held-out accuracy" in out, out
        # "# or --keys-dir fed/dealer": the dealer's folder evaluates the same rounds
        alt = dealer.run(
            f"fedpriv client evaluate --run-dir {ev.home}/exp1 --keys-dir fed/dealer --out alt"
        )
        assert out.splitlines()[:2] == alt.splitlines()[:2], (out, alt)
        out = ev.run("fedpriv report build exp1 && fedpriv report show exp1")
        assert "privacy report" in out and "client-2" in out, out

        # Proving the ledger complete: STATE = ~/.fedpriv/state (device 0's --state-dir);
        # RUN_DIR = exp1; fed/server/identities.json: the dealer's registry, handed to the
        # auditor at the same path
        out = ev.run(LEDGER_HEAD.replace("STATE", "~/.fedpriv/state"))
        assert "client-0: head of run" in out, out
        (ev.home / "fed" / "server").mkdir(parents=True)
        shutil.copy(dealer.home / "fed/server/identities.json", ev.home / "fed/server")
        out = ev.run(VERIFY_HEAD.replace("RUN_DIR", "exp1"))
        assert "[PASS] client heads" in out and "VERIFIED" in out, out
        # ... and a ledger without its last round, re-chained and re-signed, fails with the head
        ev.run("cp -rp exp1 exp1-dropped")
        _drop_last_round(ev.home / "exp1-dropped")
        ev.run("fedpriv report build exp1-dropped")
        alone = ev.run("fedpriv report verify exp1-dropped --registry fed/server/identities.json")
        assert "[FLAG] client heads" in alone and "VERIFIED" in alone, alone
        rc, out = ev.call(VERIFY_HEAD.replace("RUN_DIR", "exp1-dropped"))
        assert rc == 9 and "[FAIL] client heads" in out, out
        assert "latest rounds are missing" in out, out

        dev3 = hosts["device3"]
        dev3.run("fedpriv keys node-key --out ~/fedpriv-node")
        shutil.copy(dev3.home / "fedpriv-node" / "node.pub", dealer.home / "node.pub")
        out = dealer.run("fedpriv keys add-node --out fed --public-key node.pub --sealed")
        assert "client-3" in out, out
        # "# copy fed/clients/client-3 to the device, fed/server to the server host"
        dealer.run(f"cp -rp fed/clients/client-3 {dev3.home}/fedpriv-bundle")
        dealer.run(
            f"rm -rf {server.home}/fedpriv-server && cp -rp fed/server {server.home}/fedpriv-server"
        )
        out = server.run("fedpriv server register --bundle ~/fedpriv-server")
        assert "registered 1 new nodes" in out, out
        shutil.copy(data[0], dev3.home / "my-data.csv")
        # --superlink ... = 127.0.0.1:PORT, --data ... = ~/my-data.csv
        dlog = dev3.start(
            f"fedpriv client start --superlink 127.0.0.1:{port} --bundle ~/fedpriv-bundle "
            "--node-key ~/fedpriv-node/node.key --data ~/my-data.csv",
            "client.out",
        )
        wait_for_text(dlog, "connected to", 120, dev3.procs[-1])
        assert "no HE secret yet" in dlog.read_text()  # sealed: it arrives with the next run

        # Threshold keys: a second federation's dealer, same experiment
        td = hosts["td"]
        shutil.copy(exp, td.home / "exp.toml")
        out = td.run(THRESHOLD_INIT)
        assert "threshold custody: 2 of 3 nodes" in out, out
        _check_threshold_bundles(td.home / "fed")
