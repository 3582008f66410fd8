"""vLLM as a server: the engine in its own process (on other devices, or another machine), the trainer its client.

    python -m posttrain.rollout.vllm_server --model DIR --port 8765 [--host 0.0.0.0] [--timeout 600]

starts the engine (vllm_engine.VLLMEngine, in the server's process) and serves one trainer at a time; a run with
`rollout.vllm_mode=server rollout.vllm_server=HOST:8765` connects to it. Without rollout.vllm_server the run starts
a server on this machine itself and stops it when it ends.

    control   multiprocessing.connection (pickled messages, an authkey): generate, score, sync, close
    weights   a two-member process group of its own — rank 0 the trainer, rank 1 the server — made from a
              TCPStore on the server's port + 1 (gloo on CPU, NCCL on a GPU), never the default group, so a DDP
              trainer's collectives are untouched. A sync announces the tensors (names, shapes, dtypes) in buckets
              of at most --bucket-mb, then broadcasts each bucket as one flat tensor; the server cuts it back into
              tensors and hands them to vLLM's load_weights, then drops its prefix cache
    timeouts  every wait — an answer, a collective — is bounded by the timeout. A server that is killed closes
              its socket and the trainer fails at once; one that hangs fails the wait after the timeout. Either
              way the error names the server and what it was doing (ServerGone), instead of hanging. A server
              whose trainer is gone goes back to waiting for the next one.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from multiprocessing.connection import Client, Connection, Listener

import torch
import torch.distributed as dist

AUTHKEY = os.environ.get("POSTTRAIN_VLLM_AUTHKEY", "posttrain").encode()
BUCKET_MB = 256
STARTUP_SECONDS = 900.0  # a server started by the run may take this long to load (at least rollout.vllm_timeout)


class ServerGone(RuntimeError):
    """The vLLM server did not answer: it exited, or it is stuck."""


# ---------------------------------------------------------------------------------------------------------------------
# The weight channel: a two-member process group of its own
# ---------------------------------------------------------------------------------------------------------------------

def weight_group(host: str, port: int, rank: int, timeout: float):
    """Rank 0 (the trainer) and rank 1 (the server) on a TCPStore that the server hosts at host:port."""
    store = dist.TCPStore(host, port, world_size=2, is_master=rank == 1, timeout=timedelta(seconds=timeout),
                          wait_for_workers=False)
    if torch.cuda.is_available():
        return dist.ProcessGroupNCCL(store, rank, 2)
    return dist.ProcessGroupGloo(store, rank, 2, timedelta(seconds=timeout))


def broadcast(group, tensor: torch.Tensor, timeout: float) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait(timedelta(seconds=timeout))


def buckets(tensors, limit_bytes: int):
    """Consecutive (name, tensor) pairs of one dtype, at most limit_bytes each (a bigger tensor alone)."""
    bucket, size, dtype = [], 0, None
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and (size + nbytes > limit_bytes or tensor.dtype != dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size, dtype = size + nbytes, tensor.dtype
    if bucket:
        yield bucket


# ---------------------------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------------------------

def serve(model: str, host: str, port: int, timeout: float, max_model_len: int | None, logprobs: str, seed: int,
          ready_file: str | None = None) -> None:
    from posttrain.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(model, logprobs=logprobs, seed=seed, max_model_len=max_model_len)
    with Listener((host, port), authkey=AUTHKEY) as listener:
        print(f"vLLM server: {model} on {host}:{port}", flush=True)
        if ready_file:
            open(ready_file, "w").close()
        while True:
            with listener.accept() as conn:
                if not _serve_trainer(engine, conn, host, port + 1, timeout):
                    return


def _serve_trainer(engine, conn: Connection, host: str, group_port: int, timeout: float) -> bool:
    """Answer one trainer until it closes (False: the server should exit) or goes away (True: wait for the next)."""
    group = None
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, ConnectionError):
            return True  # the trainer is gone
        if op == "hello":
            engine.eos_token_ids = list(args["eos_token_ids"])
            conn.send({"reproducible": engine.reproducible})
        elif op == "generate":
            conn.send(engine.generate(*args["args"], **args["kwargs"]))
        elif op == "score":
            conn.send(engine.score(*args))
        elif op == "sync":
            if group is None:
                group = weight_group(host, group_port, rank=1, timeout=timeout)
            for specs in args["buckets"]:
                flat = torch.empty(sum(shape.numel() for _, shape, _ in specs), dtype=specs[0][2])
                broadcast(group, flat, timeout)
                engine.load(_unflatten(flat, specs))
            engine.llm.reset_prefix_cache()
            conn.send("synced")
        elif op == "close":
            conn.send("closed")
            return not args.get("shutdown", False)


def _unflatten(flat: torch.Tensor, specs) -> list[tuple[str, torch.Tensor]]:
    out, offset = [], 0
    for name, shape, _ in specs:
        out.append((name, flat[offset:offset + shape.numel()].view(shape)))
        offset += shape.numel()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The trainer's side: an Engine that talks to the server
# ---------------------------------------------------------------------------------------------------------------------

class VLLMClient:
    """backends.Engine over a vLLM server at `address` ("host:port"); with address None, a server started here
    (`python -m posttrain.rollout.vllm_server`) on `model_path`, stopped by close() or when this process exits."""

    def __init__(self, address: str | None, model_path: str, eos_token_ids: list[int], *, logprobs: str = "raw",
                 seed: int = 0, max_model_len: int | None = None, timeout: float = 600.0,
                 bucket_mb: int = BUCKET_MB):
        self.timeout, self.bucket_bytes, self.process, self.syncs = timeout, bucket_mb * 2**20, None, 0
        if address is None:
            address = self._start_local(model_path, logprobs, seed, max_model_len, timeout)
        self.address = address
        host, port = address.rsplit(":", 1)
        self.host, self.port = host, int(port)
        try:
            self.conn = Client((self.host, self.port), authkey=AUTHKEY)
        except OSError as e:
            raise ServerGone(f"no vLLM server at {address} ({e}) — fix: start one with python -m "
                             f"posttrain.rollout.vllm_server --model DIR --port {port}, or leave rollout.vllm_server "
                             "empty to start one here") from e
        self.group = None
        self.reproducible = self._ask("hello", {"eos_token_ids": eos_token_ids}, "the handshake")["reproducible"]

    def _start_local(self, model_path, logprobs, seed, max_model_len, timeout) -> str:
        import tempfile
        port = free_port()
        ready = os.path.join(tempfile.mkdtemp(prefix="posttrain-vllm-"), "ready")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "posttrain.rollout.vllm_server", "--model", model_path, "--host", "127.0.0.1",
             "--port", str(port), "--timeout", str(timeout), "--max-model-len", str(max_model_len or 0),
             "--logprobs", logprobs, "--seed", str(seed), "--ready-file", ready, "--parent", str(os.getpid())])
        deadline = time.monotonic() + max(timeout, STARTUP_SECONDS)
        while not os.path.exists(ready):
            if self.process.poll() is not None:
                raise ServerGone(f"the vLLM server for {model_path} exited with code {self.process.returncode} "
                                 "while starting (its output is above)")
            if time.monotonic() > deadline:
                self.close()
                raise ServerGone(f"the vLLM server for {model_path} did not start within "
                                 f"{max(timeout, STARTUP_SECONDS):g} s")
            time.sleep(0.2)
        return f"127.0.0.1:{port}"

    def _ask(self, op: str, args, doing: str):
        try:
            self.conn.send((op, args))
            if not self.conn.poll(self.timeout):
                raise ServerGone(f"the vLLM server at {self.address} did not answer {doing} within {self.timeout:g} "
                                 "s (rollout.vllm_timeout): it is stuck, or too slow for this timeout")
            return self.conn.recv()
        except (EOFError, ConnectionError, BrokenPipeError) as e:
            raise ServerGone(f"the vLLM server at {self.address} is gone ({type(e).__name__} during {doing}): it "
                             "exited or was killed") from e

    def generate(self, prompts, params, *, seed=0, step=0, example_ids=None, stop_sequence=None):
        return self._ask("generate", {"args": (prompts, params), "kwargs": dict(seed=seed, step=step,
                                                                                   example_ids=example_ids)},
                         "a generate request")

    def score(self, prompt_ids, completion_ids) -> list[float]:
        return self._ask("score", (prompt_ids, completion_ids), "a score request")

    def sync(self, model) -> int:
        """Stream the trainer's weights to the server in buckets (rank 0 of the weight group); returns bytes sent."""
        from posttrain.rollout.vllm_engine import trainer_weights

        tensors = [(n, t.detach().contiguous()) for n, t in trainer_weights(model)]
        plan = list(buckets(tensors, self.bucket_bytes))
        try:
            self.conn.send(("sync", {"buckets": [[(n, t.shape, t.dtype) for n, t in b] for b in plan]}))
            if self.group is None:
                self.group = weight_group(self.host, self.port + 1, rank=0, timeout=self.timeout)
            for bucket in plan:
                broadcast(self.group, torch.cat([t.flatten() for _, t in bucket]), self.timeout)
        except (EOFError, ConnectionError, BrokenPipeError, RuntimeError) as e:
            raise ServerGone(f"the vLLM server at {self.address} is gone or stuck during a weight sync "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); every collective "
                             f"waits at most {self.timeout:g} s (rollout.vllm_timeout)") from e
        if not self.conn.poll(self.timeout):
            raise ServerGone(f"the vLLM server at {self.address} did not confirm a weight sync within "
                             f"{self.timeout:g} s (rollout.vllm_timeout)")
        self.conn.recv()
        self.syncs += 1
        return sum(t.numel() * t.element_size() for _, t in tensors)

    def close(self) -> None:
        """Let the server go (stop it if this process started it)."""
        try:
            if getattr(self, "conn", None) is not None:
                self.conn.send(("close", {"shutdown": self.process is not None}))
                self.conn.close()
        except (OSError, EOFError):
            pass
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    """A port free now, with the next one free too (the weight group's store)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def _exit_with_parent(pid: int) -> None:
    """A server started by a run exits when that run's process does (no process outlives the run)."""
    import threading

    def watch():
        while True:
            try:
                os.kill(pid, 0)
            except OSError:
                os._exit(0)
            time.sleep(1.0)
    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m posttrain.rollout.vllm_server", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a plain Hugging Face model directory (a run's export)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8765, help="control port; the weight group uses port + 1")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds any wait may take")
    parser.add_argument("--max-model-len", type=int, default=0, help="0: the model's context")
    parser.add_argument("--logprobs", choices=["raw", "processed"], default="processed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.parent:
        _exit_with_parent(a.parent)
    serve(a.model, a.host, a.port, a.timeout, a.max_model_len or None, a.logprobs, a.seed, a.ready_file)


if __name__ == "__main__":  # vLLM may start worker processes with spawn: the entry point is guarded
    main()
