"""Round trips between OpenAI's JSON and the CompletionService protos."""

from __future__ import annotations

from typing import Any

import pytest

from scillm.clients import InvalidRequestError, openai_wire

FULL_REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "sys"},
        {"role": "developer", "content": "dev"},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA",
                                                "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "QQ==", "format": "wav"}},
            {"type": "file", "file": {"file_id": "f1", "filename": "a.pdf"}},
        ], "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "add", "arguments": "{\"a\":1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "2"},
    ],
    "tools": [{"type": "function", "function": {
        "name": "add", "description": "adds", "strict": True,
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}],
    "tool_choice": {"type": "function", "function": {"name": "add"}},
    "response_format": {"type": "json_schema", "json_schema": {
        "name": "out", "schema": {"type": "object"}, "strict": True}},
    "n": 2, "stop": ["END"], "seed": 7, "temperature": 0.5, "top_p": 0.9,
    "max_completion_tokens": 50, "max_tokens": 60, "logprobs": True, "top_logprobs": 3,
    "reasoning_effort": "low", "user": "u1", "metadata": {"k": "v"},
    "presence_penalty": 0.1, "frequency_penalty": 0.2, "parallel_tool_calls": False,
    "top_k": 40,
    "scillm": {"fallbacks": ["b"], "timeout_s": 1.5, "num_retries": 2, "deterministic": True,
               "cache": {"bypass": True, "no_store": False, "ttl_s": 60.0, "namespace": "ns",
                         "max_age_s": 30.0, "enabled": True}},
}


def test_request_round_trip_keeps_every_field() -> None:
    back = openai_wire.request_from_proto(openai_wire.request_to_proto(FULL_REQUEST))
    assert back == FULL_REQUEST


def test_whole_numbers_in_schemas_and_extras_come_back_as_integers() -> None:
    """A Struct holds doubles; integers must not come back as 1.0 (llama.cpp's JSON-schema
    converter fails on `"minItems": 1.0`, servers typing `top_k` refuse 40.0)."""
    schema = {"type": "array", "minItems": 1, "maxItems": 3, "items": {"maximum": 2.5}}
    back = openai_wire.request_from_proto(openai_wire.request_to_proto({
        "model": "m", "messages": [{"role": "user", "content": "x"}], "top_k": 40,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s",
                                                                   "schema": schema}}}))
    got = back["response_format"]["json_schema"]["schema"]
    assert got == schema and type(got["minItems"]) is int and type(back["top_k"]) is int
    assert type(got["items"]["maximum"]) is float


def test_schemas_keep_the_order_of_their_keys_and_their_whole_integers() -> None:
    """A Struct is a map: `zeta_reasoning, middle_steps, alpha_answer` reached the upstream
    in another order (Structured Outputs write properties in schema order, so a model
    answered before it reasoned), and 9007199254740993 became 9007199254740992.0."""
    names = ["zeta_reasoning", "middle_steps", "alpha_answer", "b", "a"]
    schema = {"type": "object", "properties": {n: {"type": "string"} for n in names},
              "required": names, "maximum": 9007199254740993}
    back = openai_wire.request_from_proto(openai_wire.request_to_proto({
        "model": "m", "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s",
                                                                   "schema": schema}}}))
    for got in (back["tools"][0]["function"]["parameters"],
                back["response_format"]["json_schema"]["schema"]):
        assert list(got["properties"]) == names and list(got) == list(schema)
        assert got["maximum"] == 9007199254740993 and type(got["maximum"]) is int


@pytest.mark.parametrize(("text", "says"), [
    ("{", "not valid JSON"), ("[1]", "must be a JSON object"), ("{\"a\": NaN}", "not valid"),
    ("[" * 5000 + "]" * 5000, "deep"),
    ("{\"a\":" * 5000 + "1" + "}" * 5000, "deep"),
])
def test_a_grpc_callers_schema_text_that_is_no_json_object_names_its_field(
        text: str, says: str) -> None:
    from scillm.completion.v1 import completion_pb2 as pb

    request = pb.CompletionRequest(model="m", messages=[pb.Message(
        role=pb.ROLE_USER, content=[pb.ContentPart(text="x")])])
    request.response_format.type = pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    request.response_format.json_schema.schema_json = text
    with pytest.raises(InvalidRequestError) as info:
        openai_wire.request_from_proto(request)
    assert info.value.param == "response_format.json_schema.schema_json", info.value
    assert says in info.value.message, info.value.message
    tool = pb.CompletionRequest(model="m")
    tool.tools.add().function.CopyFrom(pb.FunctionDefinition(name="f", parameters_json=text))
    with pytest.raises(InvalidRequestError) as info:
        openai_wire.request_from_proto(tool)
    assert info.value.param == "tools[0].function.parameters_json", info.value


def test_fields_the_contract_does_not_type_pass_through_both_ways() -> None:
    """OpenAI's `service_tier`, `message.annotations` (web search citations),
    `message.audio`, a chunk's `system_fingerprint`, an assistant's `function_call` and a
    provider's own fields were dropped on the way through the protos."""
    annotations = [{"type": "url_citation", "url_citation": {
        "url": "https://example.org", "title": "t", "start_index": 0, "end_index": 3}}]
    reply = {"id": "r", "object": "chat.completion", "created": 1, "model": "m",
             "service_tier": "default", "x_provider": {"region": "eu"},
             "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                          "message": {"role": "assistant", "content": "hi", "refusal": None,
                                      "annotations": annotations,
                                      "audio": {"id": "a1", "data": "UklG",
                                                "expires_at": 9, "transcript": "hi"}}}],
             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    back = openai_wire.response_from_proto(openai_wire.response_to_proto(reply))
    assert back["service_tier"] == "default" and back["x_provider"] == {"region": "eu"}
    message = back["choices"][0]["message"]
    assert message["annotations"] == annotations and message["audio"]["id"] == "a1"
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "system_fingerprint": "fp_1", "service_tier": "flex",
             "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
    back = openai_wire.chunk_from_proto(openai_wire.chunk_to_proto(chunk))
    assert (back["system_fingerprint"], back["service_tier"]) == ("fp_1", "flex")
    request = {"model": "m", "messages": [
        {"role": "assistant", "content": None,
         "function_call": {"name": "f", "arguments": "{}"}, "audio": {"id": "a1"}},
        {"role": "user", "content": "x"}]}
    back = openai_wire.request_from_proto(openai_wire.request_to_proto(request))
    assert back["messages"][0]["function_call"] == {"name": "f", "arguments": "{}"}
    assert back["messages"][0]["audio"] == {"id": "a1"}


def test_an_untyped_field_too_deep_is_refused_naming_it() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = {"a": deep}
    with pytest.raises(InvalidRequestError) as info:
        openai_wire.request_to_proto({"model": "m", "messages": [
            {"role": "user", "content": "x", "extra": deep}]})
    assert info.value.param == "messages[0].extra", info.value


def test_litellm_cache_controls_map_onto_the_cache_options() -> None:
    """LiteLLM's per-request `cache` controls and `caching` flag become CacheOptions (never
    extra fields for the provider), merged over `scillm.cache`."""
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    req = openai_wire.request_to_proto({**base, "cache": {
        "no-cache": True, "no-store": True, "ttl": 600, "s-maxage": 60, "namespace": "exp",
        "use-cache": True}})
    assert not req.HasField("extra_body")
    back = openai_wire.request_from_proto(req)["scillm"]["cache"]
    assert back == {"bypass": True, "no_store": True, "namespace": "exp", "ttl_s": 600.0,
                    "max_age_s": 60.0, "enabled": True}
    merged = openai_wire.request_from_proto(openai_wire.request_to_proto({
        **base, "caching": False, "cache": {"s-max-age": 0},
        "scillm": {"cache": {"namespace": "mine"}}}))["scillm"]["cache"]
    assert merged == {"bypass": False, "no_store": False, "namespace": "mine",
                      "max_age_s": 0.0, "enabled": False}
    assert "scillm" not in openai_wire.request_from_proto(openai_wire.request_to_proto(base))


@pytest.mark.parametrize("body, param", [
    ({"cache": {"no-cahce": True}}, "cache"), ({"cache": True}, "cache"),
    ({"cache": {"ttl": 0}}, "cache.ttl"), ({"cache": {"s-maxage": -1}}, "cache.s-maxage"),
    ({"cache": {"no-store": "yes"}}, "cache.no-store"), ({"caching": 1}, "caching")])
def test_bad_cache_controls_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        openai_wire.request_to_proto({"model": "m", "messages": [
            {"role": "user", "content": "x"}], **body})
    assert info.value.param == param


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_modes(choice: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": choice}
    assert openai_wire.request_from_proto(openai_wire.request_to_proto(body))["tool_choice"] \
        == choice


def test_response_and_chunk_round_trip() -> None:
    response = {
        "id": "c1", "object": "chat.completion", "created": 5, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": {"content": [
            {"token": "a", "logprob": -0.5, "bytes": [97],
             "top_logprobs": [{"token": "a", "logprob": -0.5, "bytes": [97]}]}],
            "refusal": None},
            "message": {"role": "assistant", "content": "hi", "refusal": None, "tool_calls": [
                {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
                  "prompt_tokens_details": {"cached_tokens": 2},
                  "completion_tokens_details": {"reasoning_tokens": 1}},
        "system_fingerprint": "fp",
    }
    assert openai_wire.response_from_proto(openai_wire.response_to_proto(response)) == response
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
             "choices": [{"index": 0, "finish_reason": None, "delta": {
                 "role": "assistant", "content": "h", "tool_calls": [
                     {"index": 0, "id": "t", "type": "function",
                      "function": {"name": "f", "arguments": "{"}}]}}]}
    assert openai_wire.chunk_from_proto(openai_wire.chunk_to_proto(chunk)) == chunk


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": "hi"}, "messages"),
    # OpenAI's metadata values are strings: 2 reached the upstream as "2", null as "None".
    ({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "metadata": {"n": 2}}, "metadata.n"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "metadata": {"none": None}}, "metadata.none"),
    # Newer tool choices and tools: refused naming the type, not "must be of type dict".
    ({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}},
     "tool_choice.type"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": 1.5}, "seed"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "maybe"},
     "tool_choice"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "yaml"}}, "response_format.type"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "video"}]}]},
     "messages[0].content[0].type"),
])
def test_bad_requests_name_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        openai_wire.request_to_proto(body)
    assert info.value.param == param


def test_content_of_no_kind_says_what_content_may_be() -> None:
    """It said "must be of type list", as if a string were not content too."""
    with pytest.raises(InvalidRequestError, match="must be a string or a list of content"):
        openai_wire.request_to_proto({"model": "m", "messages": [{"role": "user",
                                                                   "content": 5}]})


_MSG = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(("extra", "param"), [
    ({"parallel_tool_calls": "false"}, "parallel_tool_calls"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": "false"}}]},
     "tools[0].function.strict"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "o",
                                                                 "strict": "no"}}},
     "response_format.json_schema.strict"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": None}}}, None),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": 5}}},
     "response_format.json_schema.name"),
    ({"scillm": {"deterministic": "false"}}, "scillm.deterministic"),
    ({"scillm": {"cache": {"bypass": 0}}}, "scillm.cache.bypass"),
    ({"scillm": {"cache": {"no_store": "yes"}}}, "scillm.cache.no_store"),
    ({"scillm": {"cache": {"enabled": 1}}}, "scillm.cache.enabled"),
    ({"scillm": {"cache": {"namespace": 7}}}, "scillm.cache.namespace"),
    ({"scillm": {"session_id": 12}}, "scillm.session_id"),
    ({"scillm": {"track": ["a"]}}, "scillm.track"),
])
def test_a_flag_or_name_of_the_wrong_type_is_refused_not_coerced(
        extra: dict[str, Any], param: str | None) -> None:
    """"false" is a true value to Python's bool(): such a field is refused, naming it (a
    null name is no name)."""
    body = {"model": "m", "messages": _MSG, **extra}
    if param is None:
        assert openai_wire.request_to_proto(body).response_format.json_schema.name == ""
        return
    with pytest.raises(InvalidRequestError) as info:
        openai_wire.request_to_proto(body)
    assert info.value.param == param


def test_null_session_and_track_are_empty_not_the_text_none() -> None:
    req = openai_wire.request_to_proto(
        {"model": "m", "messages": _MSG, "scillm": {"session_id": None, "track": None,
                                                     "deterministic": None}})
    assert (req.context.session_id, req.context.track, req.routing.deterministic) == ("", "",
                                                                                      False)


@pytest.mark.parametrize(("body", "flags"), [
    ({}, (False, False)),
    ({"stream": None, "stream_options": None}, (False, False)),
    ({"stream": True}, (True, False)),
    ({"stream": True, "stream_options": {"include_usage": True}}, (True, True)),
    ({"stream": False, "stream_options": {}}, (False, False)),
])
def test_stream_flags(body: dict[str, Any], flags: tuple[bool, bool]) -> None:
    assert openai_wire.stream_flags(body) == flags


@pytest.mark.parametrize(("body", "param"), [
    ({"stream": "yes"}, "stream"),
    ({"stream": 1}, "stream"),
    ({"stream": True, "stream_options": "usage"}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": "true"}},
     "stream_options.include_usage"),
])
def test_stream_flags_of_the_wrong_type_name_the_field(body: dict[str, Any],
                                                       param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        openai_wire.stream_flags(body)
    assert info.value.param == param


def _nested(levels: int) -> dict[str, Any]:
    """A JSON object `levels` deep (the top level is 1), arrays and objects in turn."""
    value: Any = {"leaf": 1}
    for level in range(levels - 2):
        value = [value] if level % 2 == 0 else {"a": value}
    return {"a": value}


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _deep_object(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("where", ["tools", "schema", "extra"])
@pytest.mark.parametrize("make", [_deep_object, _nested])
def test_json_as_deep_as_the_limit_crosses_a_grpc_wire_and_deeper_is_refused(
        where: str, make: Any) -> None:
    """A Struct holds JSON for tools, schemas and extra_body; protobuf's parsers stop at 100
    nested messages, so JSON past MAX_JSON_DEPTH is refused naming its field (it failed as
    an internal error, or could not cross a gRPC wire); JSON at the limit goes through
    serialisation and back, inside a stream request, unchanged."""
    from scillm.completion.v1 import completion_pb2 as pb

    def body(levels: int) -> dict[str, Any]:
        # extra_body is the Struct: the body's unknown keys are its top level.
        value = make(levels - 1 if where == "extra" else levels)
        assert _depth({"extra": value} if where == "extra" else value) == levels
        out: dict[str, Any] = {"model": "m", "messages": _MSG}
        if where == "tools":
            out["tools"] = [{"type": "function", "function": {"name": "f", "parameters": value}}]
        elif where == "schema":
            out["response_format"] = {"type": "json_schema",
                                      "json_schema": {"name": "x", "schema": value}}
        else:
            out["extra"] = value
        return out

    limit = openai_wire.MAX_JSON_DEPTH
    request = openai_wire.request_to_proto(body(limit))
    wire = pb.CompletionStreamRequest(request=request).SerializeToString()
    back = openai_wire.request_from_proto(pb.CompletionStreamRequest.FromString(wire).request)
    assert back == openai_wire.request_from_proto(request)
    with pytest.raises(InvalidRequestError) as info:
        openai_wire.request_to_proto(body(limit + 1))
    assert info.value.param == {"tools": "tools[0].function.parameters",
                                "schema": "response_format.json_schema.schema",
                                "extra": "extra_body"}[where]
    assert f"nested more than {limit} levels deep" in str(info.value)
