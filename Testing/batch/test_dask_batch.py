"""Conversions on Dask: a LocalCluster (--dask-local) and a real `dask scheduler` + `dask worker`
(--dask-scheduler) give the same statuses, JSON lines, summary and byte-identical volume files as a
local run; a worker that dies mid-file leaves no partial file (the file is retried, or reported
failed). Few small files: the cluster start-up dominates.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ScancoUnitsLib as S
from ScancoUnitsLib.core.header import Calibration

from cli_harness import run_cli as run

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.usefixtures("in_process_cli")

CAL = Calibration(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52, density_intercept=-196.6,
                  density_unit="mg HA/ccm", calibration_type=2, calibration_text="70 kVp, dask test")
PACKAGE_ROOT = str(Path(S.__file__).resolve().parents[1])  # the folder holding ScancoUnitsLib
_VOLATILE = ("seconds", "outputs")


def inputs(folder: Path):
    folder.mkdir()
    rng = np.random.default_rng(6)
    for i, name in enumerate(("A.isq", "B.aim", "C.ISQ;2")):
        volume = rng.integers(-2000, 16000, size=(6 + i, 9, 13)).astype(np.int16)
        writer = S.write_aim if name.endswith(".aim") else S.write_isq
        writer(folder / name, volume, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    (folder / "broken.isq").write_bytes(b"CTDATA-HEADER_V1" + b"\x00" * 100)
    return folder


def volume_bytes(folder: Path):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.nrrd"))}


def comparable(stdout: str):
    records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    for r in records:
        for key in _VOLATILE:
            r.pop(key)
    return sorted(records, key=lambda r: r["input"])


def summary_rows(path: Path):
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    for r in rows:
        for key in _VOLATILE:
            r.pop(key)
    return sorted(rows, key=lambda r: r["input"])


def local_run(capsys, src: Path, out: Path):
    status, stdout, _ = run(capsys, "convert", src, "-o", out, "--json", "--summary", out / "summary.csv")
    assert status == 1  # broken.isq
    return stdout


def test_local_cluster_gives_the_local_run_bytes(tmp_path, capsys):
    src = inputs(tmp_path / "in")
    local = local_run(capsys, src, tmp_path / "local")
    status, stdout, stderr = run(capsys, "convert", src, "-o", tmp_path / "dask", "--dask-local", "2", "--json",
                                 "--summary", tmp_path / "dask" / "summary.csv")
    assert status == 1, stderr
    assert comparable(stdout) == comparable(local)
    assert volume_bytes(tmp_path / "dask") == volume_bytes(tmp_path / "local")
    assert len(volume_bytes(tmp_path / "local")) == 9
    assert summary_rows(tmp_path / "dask" / "summary.csv") == summary_rows(tmp_path / "local" / "summary.csv")
    assert not [n for n in os.listdir(tmp_path / "dask") if ".partial-" in n]


def _dask_command(name: str):
    exe = Path(sys.executable).with_name("dask")
    return [str(exe), name] if exe.exists() else [sys.executable, "-m", f"distributed.cli.dask_{name}"]


def test_running_scheduler_and_worker(tmp_path, capsys):
    src = inputs(tmp_path / "in")
    local = local_run(capsys, src, tmp_path / "local")
    scheduler_file = tmp_path / "scheduler.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
    processes = []
    try:
        processes.append(subprocess.Popen(
            _dask_command("scheduler") + ["--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                          "--scheduler-file", str(scheduler_file)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        processes.append(subprocess.Popen(
            _dask_command("worker") + ["--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
                                       "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        with distributed.Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=60)
        status, stdout, stderr = run(capsys, "convert", src, "-o", tmp_path / "remote", "--dask-scheduler",
                                     address, "--json", "--summary", tmp_path / "remote" / "summary.csv")
        assert status == 1, stderr
        assert comparable(stdout) == comparable(local)
        assert volume_bytes(tmp_path / "remote") == volume_bytes(tmp_path / "local")
        assert summary_rows(tmp_path / "remote" / "summary.csv") == summary_rows(tmp_path / "local" / "summary.csv")
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=20)


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """in/big.isq: 32 MB, converting it takes about a second; in/a.isq, in/c.isq: tiny."""
    from ScancoUnitsLib.formats.isq import IsqWriter
    from ScancoUnitsLib.phantom import PHANTOM_CALIBRATION, phantom_slabs

    src = tmp_path_factory.mktemp("dask-big")
    slab = next(phantom_slabs((8, 512, 512), slices=8))
    with IsqWriter(src / "big.isq", (512, 512, 64), voxel_size_mm=(0.02,) * 3,
                   calibration=PHANTOM_CALIBRATION) as writer:
        for _ in range(8):
            writer.write_slab(slab)
    for name in ("a", "c"):
        S.write_isq(src / f"{name}.isq", np.zeros((4, 5, 6), np.int16), voxel_size_mm=(0.01,) * 3, calibration=CAL)
    return src


def test_a_worker_killed_mid_file_is_retried_and_leaves_no_partial(tmp_path, big_input):
    from ScancoUnitsLib.batch.jobs import Batch
    from ScancoUnitsLib.batch.dask import run_on_dask, start_local_cluster
    from ScancoUnitsLib.batch.discovery import assign_stems

    src = big_input
    out = tmp_path / "out"
    out.mkdir()
    killed = []
    cluster = start_local_cluster(2)  # what --dask-local starts: a file is retried once
    try:
        with distributed.Client(cluster) as client:
            pids = client.run(os.getpid)  # worker address -> pid

            def kill_when_writing():
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and not killed:
                    if any(".partial-" in n for n in os.listdir(out)):
                        for address, keys in client.processing().items():
                            if keys:
                                os.kill(pids[address], signal.SIGKILL)
                                killed.append(address)
                                return
                    time.sleep(0.005)

            watcher = threading.Thread(target=kill_when_writing, daemon=True)
            watcher.start()
            results = []
            inputs_ = [src / "big.isq"]
            batch = Batch(inputs_, out, S.ConversionRequest(), assign_stems(inputs_), on_result=results.append)
            run_on_dask(batch, client=client)
            watcher.join(timeout=5)
    finally:
        cluster.close()
    assert killed, "no worker was killed mid-file"
    [result] = results
    assert result.status == "converted", result.error  # retried on the other worker
    assert not [n for n in os.listdir(out) if ".partial-" in n], os.listdir(out)
    assert sorted(os.listdir(out)) == ["big_BWmask.nrrd", "big_HU.nrrd", "big_RHO.nrrd", "big_metadata.json"]


def test_a_file_whose_workers_keep_dying_is_failed_without_partials(tmp_path):
    from ScancoUnitsLib.batch.jobs import Batch
    from ScancoUnitsLib.batch.dask import _outcome

    class Dead:
        def result(self):
            raise type("KilledWorker", (Exception,), {})("big.isq")

    out = tmp_path / "out"
    out.mkdir()
    from ScancoUnitsLib.io import writer_identity

    me = writer_identity._this_writer()  # a dead worker of this host and boot (our pid, another start time)
    dead = writer_identity.Writer(me.host, me.boot, me.pid, me.start + 1)
    leftover = out / f".big_HU.nrrd.partial-{dead.text}-0123abcd"
    leftover.write_bytes(b"half a file")
    batch = Batch([tmp_path / "big.isq"], out, S.ConversionRequest(), {tmp_path / "big.isq": "big"})
    result = _outcome(Dead(), tmp_path / "big.isq", batch)
    assert result.status == "failed" and "died" in result.error and "big.isq" in result.error
    assert not leftover.exists()


def test_ctrl_c_stops_the_tasks_and_leaves_no_partial(tmp_path, big_input):
    """Ctrl-C in a terminal reaches the whole process group, cluster processes included."""
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "ScancoUnitsLib.cli.main", "convert", str(big_input), "-o", str(out),
               "--dask-local", "2", "--json"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
    # an in-process test that was interrupted may have left SIGINT ignored in this process: not the child
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if any(n.startswith(".big_") and ".partial-" in n for n in os.listdir(out)):
                break
            time.sleep(0.005)
        assert process.poll() is None, "the batch ended before it could be interrupted"
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted by Ctrl-C" in stderr
    records = {Path(r["input"]).name: r for r in map(json.loads, stdout.splitlines())}
    assert sorted(records) == ["a.isq", "big.isq", "c.isq"]
    # running tasks look at the stop signal twice a second: big.isq may just have finished
    assert records["big.isq"]["status"] in ("interrupted", "converted")
    if records["big.isq"]["status"] == "interrupted":
        assert records["big.isq"]["seconds"] > 0 and "big.isq" in stderr
    names = os.listdir(out)
    assert not [n for n in names if ".partial-" in n], names
    for name, r in records.items():  # whatever is reported converted is complete; nothing else is there
        stem = name.split(".")[0]
        mine = sorted(n for n in names if n.startswith(f"{stem}_"))
        assert len(mine) == (4 if r["status"] == "converted" else 0), (name, r["status"], mine)


def test_dask_mirrored_folders_with_one_stem_and_inputs_protected(tmp_path, capsys):
    """Two visits holding the same file name are two tasks (keys apart) with their own output folders;
    an input that would be another input's output is never replaced on a worker either."""
    src = tmp_path / "study"
    rng = np.random.default_rng(8)
    for visit in ("v1", "v2"):
        (src / visit).mkdir(parents=True)
        S.write_aim(src / visit / "C1.AIM", rng.integers(0, 9000, size=(4, 5, 6)).astype(np.int16),
                    voxel_size_mm=(0.01,) * 3, calibration=CAL)
    mask = (rng.random((4, 5, 6)) > 0.5).astype(np.int8)
    S.write_aim(src / "v1" / "M.AIM", mask, voxel_size_mm=(0.01,) * 3)
    precious = {p: p.read_bytes() for p in src.rglob("*.AIM")}

    status, stdout, stderr = run(capsys, "convert", src, "-r", "-o", tmp_path / "out", "--dask-local", "2",
                                 "--json", "--outputs", "native")
    assert status == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert sorted(r["relative_path"] for r in records) == ["v1/C1.AIM", "v1/M.AIM", "v2/C1.AIM"]
    assert (tmp_path / "out" / "v1" / "C1_native.nrrd").exists()
    assert (tmp_path / "out" / "v2" / "C1_native.nrrd").exists()

    # -o the study's own folder, masks as AIM: M.AIM's mask output would be M_mask.AIM, C1's nothing
    # that clashes; an input named like an output is refused on the worker, never replaced
    (src / "v1" / "X.AIM").write_bytes((src / "v1" / "C1.AIM").read_bytes())
    S.write_aim(src / "v1" / "X_mask.AIM", mask, voxel_size_mm=(0.01,) * 3)
    precious = {p: p.read_bytes() for p in src.rglob("*.AIM")}
    S.write_aim(src / "v1" / "X.AIM", mask, voxel_size_mm=(0.01,) * 3)  # X is a mask now: X_mask.AIM
    precious[src / "v1" / "X.AIM"] = (src / "v1" / "X.AIM").read_bytes()
    status, stdout, stderr = run(capsys, "convert", src / "v1", "-o", src / "v1", "--dask-local", "2", "--json",
                                 "--format", "aim", "--outputs", "mask", "--overwrite")
    assert status == 1
    assert all(p.read_bytes() == data for p, data in precious.items())
    failed = [json.loads(line) for line in stdout.splitlines() if line.strip() and '"failed"' in line]
    assert any("X.AIM" in r["input"] and "input" in (r.get("error") or "") for r in failed), stdout
