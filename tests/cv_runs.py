"""Three real cross-validation runs for the tests of what reads a finished run directory
(report, compare, list): made once per test session by `python -m scheduler run` in a
subprocess, on the session's synthetic data, with fault rules (scheduler/faults.py) that
make each run's story certain on any CPU:

  finished     five folds done; fold 1's worker is killed after its checkpoint at step
               4 and the retry resumes there.
  failed       another learning rate; fold 3 raises a runtime error at step 4 with no
               retries allowed, so it fails while the other four finish.
  interrupted  folds 0 and 1 of the finished run's recipe; Ctrl-C once fold 0 has
               finished and fold 1 is held after its checkpoint at step 4.
"""

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
HELD_AT = 4


def write_config(path, data_dir, run_dir, folds, learning_rate, max_retries=2):
    with open(path, "w") as f:
        f.write(
            "name: %s\n"
            "data: {data_dir: %s}\n"
            "model: {image_size: 64, batch_norm_decay: 0.9}\n"
            "train: {device: cpu, batch_size: 16, max_steps: %d, learning_rate: %s, checkpoint_every_steps: 4,\n"
            "        log_every_steps: 2, summary_every_steps: 4, eval_every_steps: 6, shuffle_buffer: 64,\n"
            "        preprocess_threads: 1, cpu_threads: 1}\n"
            "eval: {batch_size: 16}\n"
            "scheduler: {device: cpu, folds: %s, run_dir: %s, local_cpus: 2, max_retries: %d}\n"
            % (os.path.basename(run_dir), data_dir, STEPS, learning_rate, list(folds), run_dir, max_retries))
    return path


def write_faults(path, rules):
    with open(path, "w") as f:
        json.dump(rules, f)
    return path


def start_driver(config, faults):
    # Its own session: the Ctrl-C of the interrupted run reaches this driver alone.
    return subprocess.Popen([sys.executable, "-m", "scheduler", "run", config, "--no-dashboard"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                            start_new_session=True,
                            env=dict(os.environ, RAY_ADDRESS="local", LMTCNN_FAULTS=faults))


def run_to_end(config, faults, expected_status):
    driver = start_driver(config, faults)
    output, _ = driver.communicate(timeout=900)
    assert driver.returncode == expected_status, output


def read_events(run_dir):
    path = os.path.join(run_dir, "events.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def interrupt_when_held(config, faults, run_dir):
    driver = start_driver(config, faults)
    try:
        deadline = time.time() + 600  # guards a hang only; the condition is reached by the fault rules
        while time.time() < deadline:
            assert driver.poll() is None, "the driver ended early:\n" + driver.stdout.read()
            events = read_events(run_dir)
            finished = {e["fold"] for e in events if e["event"] == "fold_finished"}
            held = {e["fold"] for e in events if e["event"] == "checkpoint_saved" and e["step"] == HELD_AT
                    and e["fold"] == 1}
            if finished == {0} and held == {1}:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("fold 0 never finished with fold 1 held")
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, output


def make_cv_runs(data_dir, base):
    """{"finished": run dir, "failed": ..., "interrupted": ...} under `base`."""
    os.makedirs(base, exist_ok=True)
    runs = {name: os.path.join(base, name) for name in ("finished", "failed", "interrupted")}
    run_to_end(write_config(os.path.join(base, "finished.yaml"), data_dir, runs["finished"], range(5), 0.01),
               write_faults(os.path.join(base, "finished-faults.json"),
                            [{"fold": 1, "attempt": 1, "event": "checkpoint_saved", "step": HELD_AT,
                              "action": "crash"}]),
               expected_status=0)
    run_to_end(write_config(os.path.join(base, "failed.yaml"), data_dir, runs["failed"], range(5), 0.02,
                            max_retries=0),
               write_faults(os.path.join(base, "failed-faults.json"),
                            [{"fold": 3, "attempt": 1, "event": "step_done", "step": HELD_AT, "action": "raise",
                              "text": "device lost (injected)"}]),
               expected_status=1)
    interrupt_when_held(write_config(os.path.join(base, "interrupted.yaml"), data_dir, runs["interrupted"],
                                     range(2), 0.01),
                        write_faults(os.path.join(base, "interrupted-faults.json"),
                                     [{"fold": 1, "attempt": 1, "event": "checkpoint_saved", "step": HELD_AT,
                                       "action": "hold"}]),
                        runs["interrupted"])
    return runs
