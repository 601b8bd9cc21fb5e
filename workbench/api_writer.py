"""A black-box teacher behind an OpenAI-compatible chat-completions endpoint, through the `openai` client
(retries with exponential backoff on 408/409/429/5xx, connection errors and timeouts, honouring
Retry-After). Requests run `concurrency` at a time; every answer is kept the moment it arrives.

The API key is read from the environment variable the config names and lives only in the client: it
is never in the config, a row, the manifest, a log line or an error message (errors are scrubbed).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed

from workbench.config import DistillConfig
from workbench.generation import GenerationError

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
        """Returns the failures (scrubbed messages) of requests that kept failing after the retries."""
        failures = []
        pool = ThreadPoolExecutor(self.spec.concurrency, thread_name_prefix="teacher-api")
        try:
            futures = {pool.submit(self._answer, job): job for job in jobs if job.index not in done}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    answer = future.result()
                except Exception as err:  # noqa: BLE001 - every failure is reported, none loses other rows
                    message = self.scrub(f"prompt {job.prompt_index}: {type(err).__name__}: {err}")
                    if type(err).__name__ in FATAL:
                        raise GenerationError(_field(err), message) from None
                    failures.append(message)
                    continue
                emit(job, answer)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return failures


def _field(err: Exception) -> str:
    name = type(err).__name__
    if name in ("AuthenticationError", "PermissionDeniedError"):
        return "generation.api_key_env"
    return "generation.api_model" if name == "NotFoundError" else "generation.api_base_url"
