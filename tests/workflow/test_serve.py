"""`flashref serve` end to end: the real server in a subprocess on a free loopback port, a real
HTTP client (httpx), good requests checked against in-process decoding, bad requests answered
with 4xx JSON errors, and a bounded burst of concurrent requests answered correctly.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from flashref.cli import main
from flashref.reference.seq2seq import Seq2SeqConfig, Seq2SeqModel
from flashref.workflow.checkpoint import load_checkpoint, save_checkpoint
from flashref.workflow.data import EOS, decode_tokens, encode_digits, source_ids
from flashref.workflow.decoding import beam_search, greedy_decode
from flashref.workflow.serve import MAX_BEAM_WIDTH

from transformer_cases import fresh_seed

STARTUP_S = 90  # a cold start on a busy shared CPU; usually ~3 s
TIMEOUT = httpx.Timeout(30.0)
MAX_LEN = 14


class Server:
    def __init__(self, checkpoint: str):
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flashref", "serve", checkpoint, "--host", "127.0.0.1", "--port", "0",
             "--log-level", "info"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.log: list[str] = []
        self.ready = threading.Event()
        self.url = None
        threading.Thread(target=self._drain, daemon=True).start()  # a full pipe would stall the server
        if not self.ready.wait(STARTUP_S) or self.url is None:
            self.stop()
            raise AssertionError("server did not start:\n" + "".join(self.log))

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                self.url = found.group(1)
                self.ready.set()
        self.ready.set()  # the process ended

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, client, in-process checkpoint) for a tiny random model with sharpened weights."""
    seed = fresh_seed("serve model")
    config = Seq2SeqConfig(d_model=12, nhead=2, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=16,
                           max_len=MAX_LEN)
    model = Seq2SeqModel(config, rng=np.random.default_rng(seed))
    for p in model.parameters():  # sharper than the init: varied outputs, beams that finish
        p.data *= 3.0
    path = save_checkpoint(tmp_path_factory.mktemp("serve") / "model.safetensors", model,
                           extra={"task": {"max_len": 5}})
    server = Server(str(path))
    try:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            yield server, client, load_checkpoint(path), path
    finally:
        server.stop()


def expected(checkpoint, text: str, beam_width: int = 1, max_length: int | None = None) -> dict:
    """The answer computed in this process WITHOUT the KV cache (the reference path)."""
    src = np.array(source_ids(encode_digits(text)), dtype=np.int64)
    if beam_width == 1:
        tokens = greedy_decode(checkpoint.model, src[None], max_new_tokens=max_length, use_cache=False)[0]
    else:
        ranked = beam_search(checkpoint.model, src, beam_size=beam_width, max_new_tokens=max_length, use_cache=False)
        tokens = list(ranked[0].tokens)
    want = {"output": decode_tokens(tokens), "generated_tokens": len(tokens),
            "finished": bool(tokens) and tokens[-1] == EOS}
    if beam_width == 1:
        return want
    return {**want,
            "hypotheses": [(decode_tokens(h.tokens), h.log_prob, h.finished) for h in ranked]}


def check_answer(answer: dict, want: dict, beam_width: int) -> None:
    assert answer["output"] == want["output"]
    assert answer["generated_tokens"] == want["generated_tokens"]
    assert answer["finished"] == want["finished"]
    assert answer["beam_width"] == beam_width
    if beam_width > 1:
        got = [(h["output"], h["log_prob"], h["finished"]) for h in answer["hypotheses"]]
        assert [(o, f) for o, _, f in got] == [(o, f) for o, _, f in want["hypotheses"]]
        assert np.allclose([lp for _, lp, _ in got], [lp for _, lp, _ in want["hypotheses"]], rtol=1e-12, atol=0)


def random_text(rng: np.random.Generator, max_digits: int = 7) -> str:
    return " ".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(1, max_digits + 1))))


def test_health_and_model(served):
    server, client, checkpoint, path = served
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["config"] == checkpoint.config.to_dict()
    assert info["parameters"] == sum(p.data.size for p in checkpoint.model.parameters())
    assert info["checkpoint"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["task"] == {"max_len": 5}
    assert info["limits"] == {"max_input_digits": MAX_LEN - 1, "max_beam_width": MAX_BEAM_WIDTH,
                              "max_length": MAX_LEN - 1}


def test_generate_matches_in_process_decoding(served):
    server, client, checkpoint, _ = served
    rng = np.random.default_rng(fresh_seed("serve requests"))
    for beam_width, max_length in [(1, None), (1, 3), (2, None), (4, 6), (1, MAX_LEN - 1)]:
        text = random_text(rng)
        response = client.post("/generate", json={"input": text, "beam_width": beam_width, "max_length": max_length})
        assert response.status_code == 200, response.text
        answer = response.json()
        check_answer(answer, expected(checkpoint, text, beam_width, max_length), beam_width)
        assert answer["input"] == text and answer["decode_ms"] >= 0
    # the documented example, defaults omitted; digits without spaces are accepted too
    answer = client.post("/generate", json={"input": "314"}).json()
    check_answer(answer, expected(checkpoint, "3 1 4"), 1)


@pytest.mark.parametrize("body, status, message", [
    ({"input": "3 x 4"}, 422, "unknown token 'x'"),
    ({"input": ""}, 422, "at least one digit"),
    ({"input": "12"}, 200, None),  # control: the same shape of body is fine
    ({"input": " ".join("1" * MAX_LEN)}, 422, f"at most {MAX_LEN - 1}"),
    ({"input": "3", "beam_width": 0}, 422, "beam_width: expected an integer in [1, 16]"),
    ({"input": "3", "beam_width": MAX_BEAM_WIDTH + 1}, 422, "beam_width"),
    ({"input": "3", "beam_width": "2"}, 422, "beam_width: Input should be a valid integer"),
    ({"input": "3", "beam_width": True}, 422, "beam_width"),
    ({"input": "3", "beam_width": 1.5}, 422, "beam_width"),
    ({"input": "3", "max_length": 0}, 422, "max_length: expected null or an integer in [1, 13]"),
    ({"input": "3", "max_length": MAX_LEN}, 422, "max_length"),
    ({"input": 3}, 422, "input: Input should be a valid string"),
    ({"input": None}, 422, "input"),
    ({"beam_width": 2}, 422, "input: Field required"),
    ({"input": "3", "temperature": 1.0}, 422, "temperature: Extra inputs are not permitted"),
    ({"input": "1" * 5000}, 422, "input: String should have at most 1000 characters"),
    (b"{not json", 422, "not valid JSON"),
    (b"[1, 2]", 422, "expected a JSON object"),
    (b"", 422, "expected a JSON object"),
])
def test_bad_requests_get_clear_json_errors(served, body, status, message):
    server, client, _, _ = served
    if isinstance(body, bytes):
        response = client.post("/generate", content=body, headers={"content-type": "application/json"})
    else:
        response = client.post("/generate", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    if message is not None:
        assert message in response.json()["error"]
    assert server.proc.poll() is None


def test_wrong_routes_methods_and_content_types(served):
    server, client, _, _ = served
    for response, status in [(client.get("/generate"), 405), (client.get("/nothing"), 404),
                             (client.post("/health"), 405),
                             (client.post("/generate", content=b'{"input": "3"}',
                                          headers={"content-type": "text/plain"}), 422)]:
        assert response.status_code == status and "error" in response.json()
    assert "Content-Type: application/json" in response.json()["error"]
    assert client.get("/health").json() == {"status": "ok"} and server.proc.poll() is None


def test_concurrent_burst_is_answered_correctly(served):
    """A bounded burst (24 requests, 8 client threads; greedy, beam and bad ones mixed): each
    answer is the one for its own request, and the server is still healthy afterwards."""
    server, client, checkpoint, _ = served
    rng = np.random.default_rng(fresh_seed("serve burst"))
    requests = []
    for i in range(24):
        if i % 8 == 7:
            requests.append({"input": f"{i} z"})  # bad: an unknown token
        else:
            requests.append({"input": random_text(rng, 5), "beam_width": int(rng.choice([1, 1, 2, 3])),
                             "max_length": int(rng.integers(1, 9)) if i % 4 else None})

    def send(body):
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as own:  # one connection per thread
            return own.post("/generate", json=body)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(send, requests))
    assert time.monotonic() - start < 120
    for body, response in zip(requests, responses):
        if "z" in body["input"]:
            assert response.status_code == 422 and "unknown token" in response.json()["error"]
            continue
        assert response.status_code == 200, response.text
        beam_width = body["beam_width"]
        check_answer(response.json(), expected(checkpoint, body["input"], beam_width, body["max_length"]), beam_width)
    assert client.get("/health").json() == {"status": "ok"} and server.proc.poll() is None


def test_serve_command_refuses_bad_arguments(tmp_path, capsys, monkeypatch):
    assert main(["serve", str(tmp_path / "missing.safetensors"), "--port", "0"]) == 2
    assert "no such file" in capsys.readouterr().err
    model = Seq2SeqModel(Seq2SeqConfig(d_model=4, nhead=1, num_encoder_layers=1, num_decoder_layers=1,
                                       dim_feedforward=4, max_len=8), rng=np.random.default_rng(0))
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    assert main(["serve", str(path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:100])
    assert main(["serve", str(broken)]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the serve extra were not installed
    assert main(["serve", str(path)]) == 2
    assert "uvicorn is not installed; install the serve extra: pip install -e '.[serve]'" in capsys.readouterr().err


def test_an_unexpected_failure_is_a_json_500_and_the_server_goes_on(tmp_path):
    """The same app in a real uvicorn server (a thread, port 0) whose decoder is sabotaged for
    one request: that request gets a 500 JSON error; the next ones are served."""
    import uvicorn

    from flashref.workflow.serve import Generator, create_app

    model = Seq2SeqModel(Seq2SeqConfig(d_model=4, nhead=1, num_encoder_layers=1, num_decoder_layers=1,
                                       dim_feedforward=4, max_len=8), rng=np.random.default_rng(0))
    generator = Generator(save_checkpoint(tmp_path / "m.safetensors", model))
    real_generate, calls = generator.generate, []

    def flaky(*args):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("sabotaged")
        return real_generate(*args)

    generator.generate = flaky
    server = uvicorn.Server(uvicorn.Config(create_app(generator), host="127.0.0.1", port=0, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_S
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as client:
            failed = client.post("/generate", json={"input": "1 2"})
            assert failed.status_code == 500 and failed.json() == {"error": "internal error: RuntimeError"}
            assert client.post("/generate", json={"input": "1 2"}).status_code == 200
            assert client.get("/health").json() == {"status": "ok"}
        assert len(calls) == 2
    finally:
        server.should_exit = True
        thread.join(10)
