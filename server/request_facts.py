"""What the mesh's interceptor reads of a call's request and reply, whatever the service:
the model it asks for (`model_of`), the fallbacks it names (`fallbacks_of`), what it
reserves of its key while it runs (`estimate_of`), and the model its reply is charged at
(`charged_model`). Which fields to read is worked out once per message type."""

from __future__ import annotations

from typing import Any

from scillm.completion.v1 import completion_pb2

from . import charges

__all__ = ["charged_model", "estimate_of", "fallbacks_of", "model_of"]


#: Where a service's request keeps its model, in the order `model_of` looks.
_MODEL_PATHS = (("model",), ("request", "model"), ("config", "model"),
                ("formalize", "model"), ("mcts", "model"))
#: Where a Completion request keeps the models its caller names as fallbacks.
_FALLBACK_PATHS = (("routing", "fallbacks"), ("request", "routing", "fallbacks"))
#: Per request type, those of `_MODEL_PATHS` its message type has (string fields).
_model_paths: dict[type, tuple[tuple[str, ...], ...]] = {}
#: Per request type, those of `_FALLBACK_PATHS` it has (repeated string fields).
_fallback_paths: dict[type, tuple[tuple[str, ...], ...]] = {}


def _paths_of(kind: type, paths: tuple[tuple[str, ...], ...] = _MODEL_PATHS,
              repeated: bool = False) -> tuple[tuple[str, ...], ...]:
    """The `paths` that lead, field by field, to a string field of `kind` (a repeated
    one when `repeated`)."""
    found = []
    for path in paths:
        descriptor = getattr(kind, "DESCRIPTOR", None)
        for i, name in enumerate(path):
            field = descriptor.fields_by_name.get(name) if descriptor is not None else None
            if field is None:
                break
            if i == len(path) - 1:
                if field.type == field.TYPE_STRING and _repeated(field) == repeated:
                    found.append(path)
            else:
                descriptor = field.message_type
    return tuple(found)


def _repeated(field: Any) -> bool:
    # FieldDescriptor.is_repeated is newer than the label it replaces.
    is_repeated = getattr(field, "is_repeated", None)
    return bool(is_repeated) if is_repeated is not None else field.label == field.LABEL_REPEATED


def model_of(request: Any) -> str:
    """The model a request asks for, wherever its service keeps it ("" when none).

    Which fields to read is worked out once per message type: reading fields a message
    does not have raises and catches an AttributeError each, and this runs on every RPC.
    """
    kind = type(request)
    paths = _model_paths.get(kind)
    if paths is None:
        paths = _paths_of(kind)
        if len(_model_paths) < 1024:  # request types are few; bound it anyway
            _model_paths[kind] = paths
    for path in paths:
        value: Any = request
        for name in path:
            value = getattr(value, name)
        if value:
            return str(value)
    return ""


def fallbacks_of(request: Any) -> tuple[str, ...]:
    """The models a Completion request names to answer when its model fails (none for
    other requests)."""
    kind = type(request)
    paths = _fallback_paths.get(kind)
    if paths is None:
        paths = _paths_of(kind, _FALLBACK_PATHS, repeated=True)
        if len(_fallback_paths) < 1024:
            _fallback_paths[kind] = paths
    names: list[str] = []
    for path in paths:
        value: Any = request
        for name in path:
            value = getattr(value, name)
        names.extend(value)
    return tuple(names)


def estimate_of(request: Any) -> tuple[int, int]:
    """What a call reserves of its key while it runs, (prompt, completion) tokens:
    `charges.completion_estimate` of a completion, or of a stream's; an embedding's input (a
    token per four bytes of its request); a text completion's prompts (a token per four
    bytes) and `max_tokens` (OpenAI's 16 unset) for each of its `n`, or of its `best_of`
    when that is more (the upstream makes and bills them all)."""
    inner = request.request if hasattr(request, "request") else request  # a stream's
    if type(inner) is completion_pb2.CompletionRequest:  # chat first: its checks alone
        return charges.completion_estimate(inner, request.ByteSize())
    if not hasattr(inner, "ByteSize"):  # bytes that did not parse (the interceptor's)
        return 0, 0
    if type(inner) is completion_pb2.EmbeddingRequest:  # its input, and no answer
        return -(-inner.ByteSize() // 4), 0
    if type(inner) is completion_pb2.TextCompletionRequest:  # its prompts; n answers
        answer = max(0, inner.max_tokens if inner.HasField("max_tokens")
                     else 16)  # OpenAI's default; a negative one is refused later
        return (-(-sum(p.ByteSize() for p in inner.prompt) // 4),
                answer * max(inner.n if inner.HasField("n") else 1, charges.best_of(inner)))
    return charges.completion_estimate(inner, request.ByteSize())


def charged_model(request: Any, reply: Any) -> str:
    """The model whose prices a reply is charged at: the fallback that answered, when
    one did (a Completion reply, or a stream's end), else the model asked for."""
    routing = getattr(reply, "routing", None)
    if routing is None and getattr(reply, "end", None) is not None and reply.HasField("end"):
        routing = reply.end.routing
    if routing is not None and routing.fallback_used and routing.fallback_model:
        return str(routing.fallback_model)
    return model_of(request)
