"""Story 2: a LiteLLM proxy `config.yaml`, used unchanged. Two deployments of one model
name on two OpenAI-wire upstreams started here; weighted routing; one upstream answers 429
with Retry-After and recovers; the other fails and cools down; both down, the fallback
answers; the response cache (Redis) on request.

Run: .venv/bin/python scenarios/litellm_config.py
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Any

import _kit
import openai
from _kit import Reply, check, figure, show, step

CONFIG = """\
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {a}
      api_key: os.environ/UPSTREAM_KEY
      weight: 3
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {b}
      api_key: os.environ/UPSTREAM_KEY
      weight: 1
  - model_name: backup
    litellm_params:
      model: openai/backup-model
      api_base: {c}
      api_key: os.environ/UPSTREAM_KEY
router_settings:
  routing_strategy: simple-shuffle
  num_retries: 2
  allowed_fails: 1
  cooldown_time: 4
  fallbacks: [{{gpt-4o-mini: [backup]}}]
litellm_settings:
  cache: true
  cache_params: {{type: redis, host: 127.0.0.1, port: {redis}, ttl: 600, mode: default_off}}
"""


class Behaviour:
    """How one upstream answers now: ok, a number of 429s first, or failing."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rate_limited = 0  # answer 429 (Retry-After: 1) this many times
        self.failing: int | None = None  # answer with this status from now on
        self.served: Counter[str] = Counter()

    def __call__(self, request: dict[str, Any]) -> Reply:
        if self.rate_limited:
            self.rate_limited -= 1
            self.served["429"] += 1
            return Reply(429, {"content": "slow down"}, {"retry-after": "1"})
        if self.failing is not None:
            self.served[str(self.failing)] += 1
            return Reply(self.failing, {"content": "upstream is broken"})
        self.served["200"] += 1
        text = request["messages"][-1]["content"]
        return Reply(200, {"content": f"{self.name} says: {text}"})


def story(stack: contextlib.ExitStack[Any]) -> None:
    """Story 2: a LiteLLM config.yaml, unchanged (weights, 429, failure, fallback, cache)"""
    tmp = _kit.workdir(stack)
    a, b, c = Behaviour("A"), Behaviour("B"), Behaviour("backup")
    urls = {name: _kit.Upstream(stack, up).url for name, up in (("a", a), ("b", b), ("c", c))}
    redis_port = _kit.redis(stack, tmp)
    config = tmp / "config.yaml"
    config.write_text(CONFIG.format(**urls, redis=redis_port))
    print(config.read_text())
    mesh = _kit.serve(stack, "mesh", "--service", "completion", "--http-port", "0",
                      "--config", str(config),
                      env=_kit.mesh_env(tmp, UPSTREAM_KEY="sk-upstream"), directory=tmp)
    sdk = openai.OpenAI(base_url=f"{mesh.http}/v1", api_key="unused", max_retries=0)

    def ask(text: str, **extra: Any) -> tuple[str, dict[str, Any]]:
        reply = sdk.chat.completions.create(model="gpt-4o-mini", extra_body=extra or None,
                                            messages=[{"role": "user", "content": text}])
        return reply.choices[0].message.content or "", (reply.model_extra or {})["scillm"]

    def who(answer: str) -> str:
        return answer.split(" says:")[0]

    step("weighted routing: A has weight 3, B weight 1")
    share = Counter(who(ask(f"hello {i}")[0]) for i in range(40))
    show(f"40 requests: A {share['A']}, B {share['B']}")
    check(share["A"] > share["B"] > 0, "both deployments serve, A about three times as often")

    step("A answers 429 with Retry-After: 1, then recovers")
    a.rate_limited = 1
    while a.rate_limited:
        answer, meta = ask("are you there?")
    routing = meta["routing"]
    show(f"answer {answer!r}  routing {routing}")
    check(who(answer) == "B" and routing["attempts"] == 2,
          "the 429 was retried on B at once: 2 attempts, no wait")
    check(routing["last_retry_after_ms"] == 1000, "the retry metadata keeps Retry-After: 1000 ms")
    started = time.monotonic()
    during = [(who(ask(f"during {i}")[0]), time.monotonic() - started) for i in range(10)]
    in_cooldown = [w for w, t in during if t < 3.5]
    show(f"while A cools down: {Counter(in_cooldown)}")
    check(in_cooldown and set(in_cooldown) == {"B"}, "A cools down: B serves meanwhile")
    time.sleep(max(0.0, 4.5 - (time.monotonic() - started)))
    after = Counter(who(ask(f"after {i}")[0]) for i in range(20))
    show(f"after the cooldown: {dict(after)}")
    check(after["A"] > 0, "A serves again after its cooldown")

    step("the cache, on request (cache_params mode: default_off)")
    question = "what is cached?"
    first = ask(question, cache={"use-cache": True})
    served = a.served["200"] + b.served["200"]
    second = ask(question, cache={"use-cache": True})
    check(second[0] == first[0] and second[1]["routing"]["cache_hit"],
          "the same request, asking for the cache: a cache hit")
    check(a.served["200"] + b.served["200"] == served, "the cache hit reached no upstream")
    third = ask(question)
    check(not third[1]["routing"]["cache_hit"], "without asking, the cache is left out")

    step("B fails from now on (500): retried on A, then B cools down")
    b.failing = 500
    retried, answered_by = 0, Counter[str]()
    for i in range(200):
        answer, meta = ask(f"b is down {i}")
        answered_by[who(answer)] += 1
        retried += meta["routing"]["attempts"] > 1
        if b.served["500"] >= 2:
            break
    show(f"B answered 500 twice; {retried} requests needed a retry; answered by "
         f"{dict(answered_by)}")
    check(retried == 2 and set(answered_by) == {"A"}, "each failure of B was retried on A")
    started = time.monotonic()
    cooled = [(ask(f"b cooling {i}")[1]["routing"], time.monotonic() - started)
              for i in range(10)]
    direct = [r["attempts"] == 1 and r["deployment"] == "gpt-4o-mini#0"
              for r, t in cooled if t < 3.5]
    check(direct and all(direct),
          "B cools down after allowed_fails: the next requests go to A directly")

    step("A fails too (503): the fallback model answers")
    a.failing = 503
    answer, meta = ask("anyone?")
    routing = meta["routing"]
    show(f"answer {answer!r}  routing {routing}")
    check(who(answer) == "backup" and routing["fallback_used"]
          and routing["fallback_model"] == "backup", "the fallback `backup` answered")
    cached = ask(question, cache={"use-cache": True})
    check(cached[0] == first[0] and cached[1]["routing"]["cache_hit"],
          "with every gpt-4o-mini deployment down, the cached answer is still served")
    figure(f"A:B {share['A']}:{share['B']}, 429→B in 2 attempts, fallback answered, "
           f"cache hit")


if __name__ == "__main__":
    _kit.main(story)
