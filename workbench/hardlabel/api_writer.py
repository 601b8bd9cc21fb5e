"""A black-box teacher behind an OpenAI-compatible chat-completions endpoint, through the `openai` client
(retries with exponential backoff on 408/409/429/5xx, connection errors and timeouts, honouring
Retry-After). Requests run `concurrency` at a time; every answer is kept the moment it arrives.

The API key is read from the environment variable the config names and lives only in the client: it
is never in the config, a row, the manifest, a log line or an error message (errors are scrubbed).
"""
from __future__ import annotations

import os
import queue
import threading
from collections import deque

from workbench.config.schema import DistillConfig
from workbench.hardlabel.errors import GenerationError

# Errors that no retry will fix: stop at the first instead of failing every prompt the same way.
# An endpoint still unreachable after the retries is down (a timeout, its subclass, is not fatal: one
# long answer may time out while others succeed).
FATAL = ("AuthenticationError", "PermissionDeniedError", "NotFoundError", "BadRequestError",
         "UnprocessableEntityError", "APIConnectionError")


class ApiTeacherWriter:
    def __init__(self, config: DistillConfig):
        from openai import OpenAI
        self.spec = g = config.generation
        self.secret = os.environ.get(g.api_key_env) if g.api_key_env else None
        if g.api_key_env and not self.secret:
            raise GenerationError("generation.api_key_env", f"the environment variable {g.api_key_env} is not set; "
                                                            "export the key in it before starting the app or the "
                                                            "job (it is read from there and never stored), or "
                                                            "clear the field for an endpoint that needs no key")
        # Local servers (vLLM, llama.cpp, Ollama) often need no key, but the client insists on one.
        self.client = OpenAI(base_url=g.api_base_url, api_key=self.secret or "no-key", max_retries=g.max_retries,
                             timeout=g.timeout_s)

    def scrub(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    def _answer(self, job) -> dict:
        g = self.spec
        seed = g.seed + job.index  # one seed per (prompt, sample): samples of one prompt differ, reruns agree
        response = self.client.chat.completions.create(
            model=g.api_model, messages=job.messages, temperature=g.temperature, top_p=g.top_p,
            max_tokens=g.max_new_tokens, seed=seed)
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        return {"completion": (choice.message.content or "").strip(), "finish_reason": choice.finish_reason,
                "completion_tokens": getattr(usage, "completion_tokens", None), "seed": seed}

    def write(self, jobs, done: set[int], emit) -> list[str]:
        """Returns the failures (scrubbed messages) of requests that kept failing after the retries.

        At most `concurrency` requests exist at any time (a fatal error sends no more), each on a daemon
        thread: a cancelled run exits without waiting for answers it will not keep. Rows are written
        here, on the calling thread, as answers arrive."""
        todo = deque(job for job in jobs if job.index not in done)
        results: queue.Queue = queue.Queue()
        failures, in_flight = [], 0

        def ask(job) -> None:
            try:
                results.put((job, self._answer(job), None))
            except Exception as err:  # noqa: BLE001 - handed to the calling thread, which decides
                results.put((job, None, err))

        while todo or in_flight:
            while todo and in_flight < self.spec.concurrency:
                threading.Thread(target=ask, args=(todo.popleft(),), daemon=True).start()
                in_flight += 1
            try:
                job, answer, err = results.get(timeout=0.5)  # a timeout keeps SIGTERM handling prompt
            except queue.Empty:
                continue
            in_flight -= 1
            if err is None:
                emit(job, answer)
                continue
            message = self.scrub(f"prompt {job.prompt_index}: {type(err).__name__}: {err}")
            if type(err).__name__ in FATAL:
                raise GenerationError(_field(err), message) from None
            failures.append(message)
        return failures


def _field(err: Exception) -> str:
    name = type(err).__name__
    if name in ("AuthenticationError", "PermissionDeniedError"):
        return "generation.api_key_env"
    return "generation.api_model" if name == "NotFoundError" else "generation.api_base_url"
