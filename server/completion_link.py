"""How Prove, CodeWorld and Agent reach CompletionService: through the gRPC client,
like any other caller, so routing, retries, cache, tracing and manifests apply to them
too, and a service can run in another process (`Settings.completion_target`). When
Completion is served in the same process, the mesh gives the link its in-process channel
(see `server.local_channel`): the same contract without the transport.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from scillm.clients import ScillmClient, TlsConfig, openai_wire

from .charges import admit_model_call, charge_model_call, completion_estimate
from .completion import estimated_usage

__all__ = ["CompletionLink"]


class CompletionLink:
    """A lazily opened client to CompletionService, with the call shapes domains use."""

    def __init__(self, target: Callable[[], str], *, interceptors: Sequence[Any] = (),
                 tls: TlsConfig | None = None) -> None:
        self._target = target
        self._tls = tls
        self._interceptors = list(interceptors)
        self._client: ScillmClient | None = None
        #: Key the services present to Completion (the mesh's master key, when keys are on).
        self.api_key: str | None = None
        #: A channel to use instead of dialing the target (the mesh's in-process channel).
        self.channel: Any = None

    def _get(self) -> ScillmClient:
        if self._client is None:
            self._client = ScillmClient(self._target(),
                                        interceptors=self._interceptors or None,
                                        api_key=self.api_key, tls=self._tls,
                                        channel=self.channel)
        return self._client

    async def chat(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """OpenAI request dict in, OpenAI `chat.completion` dict out.

        The call is made with the mesh's key, and admitted by and charged to the key of the
        caller the service is serving (its models, budget and tokens per minute; the
        model's prices): an agent run, a formalize loop and an MCTS search spend the
        caller's tokens, not nobody's."""
        model = str(request.get("model") or "")
        proto = openai_wire.request_to_proto(request)
        # Reserved while it runs, as a completion's own (a run's calls in flight together
        # could not all pass a key's budget); released once it is charged.
        reservation = await admit_model_call(model, completion_estimate(proto))
        try:
            reply = await self._get().completion.create(proto)
            answer = openai_wire.response_from_proto(reply)
            if not reply.routing.cache_hit:  # a cache hit cost nothing upstream: free
                usage = answer.get("usage") or {}
                prompt, completion = (int(usage.get("prompt_tokens") or 0),
                                      int(usage.get("completion_tokens") or 0))
                if not (prompt or completion):  # an upstream reporting none: the estimate
                    prompt, completion = estimated_usage(request, answer)
                await charge_model_call(model, prompt, completion)
        finally:
            if reservation is not None:
                reservation.release()
        return answer

    async def text(self, messages: Sequence[Mapping[str, Any]], *, model: str,
                   temperature: float | None = None, seed: int | None = None,
                   response_format: Mapping[str, Any] | None = None) -> str:
        """The first choice's text (asked in OpenAI's `response_format`, when given)."""
        text, _ = await self.text_and_usage(messages, model=model, temperature=temperature,
                                            seed=seed, response_format=response_format)
        return text

    async def text_and_usage(self, messages: Sequence[Mapping[str, Any]], *, model: str,
                             temperature: float | None = None, seed: int | None = None,
                             response_format: Mapping[str, Any] | None = None,
                             ) -> tuple[str, dict[str, Any]]:
        """The first choice's text and the usage."""
        request: dict[str, Any] = {"model": model, "messages": list(messages)}
        if temperature is not None:
            request["temperature"] = temperature
        if seed is not None:
            request["seed"] = seed
        if response_format is not None:
            request["response_format"] = dict(response_format)
        reply = await self.chat(request)
        choices = reply.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content") or ""
        if not isinstance(content, str):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content, reply.get("usage") or {}

    async def close(self) -> None:
        """Close the channel, if one was opened."""
        if self._client is not None:
            await self._client.close()
            self._client = None
