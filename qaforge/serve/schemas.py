"""Request bodies. Strict types: a number where text belongs is a 400, not silently "5".

Unknown fields are ignored (the openai SDK and other clients send extras such as `user`);
fields we cannot honour (n > 1, logprobs, echo, tools) are refused with a message instead.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[StrictInt, Field(ge=-1)]          # -1 or 0: off (vLLM uses -1, the engine 0)
MaxTokens = Annotated[StrictInt, Field(ge=1)]
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=2.0)]  # vLLM's range; 1 is off
Seed = Annotated[StrictInt, Field(ge=0, lt=2**63)]
Stop = Union[StrictStr, Annotated[list[StrictStr], Field(max_length=16)]]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SamplingFields(_Body):
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    max_tokens: MaxTokens | None = None
    seed: Seed | None = None
    repetition_penalty: RepetitionPenalty | None = None  # vLLM's extension; 1 is off
    ignore_eos: StrictBool = False  # vLLM's extension: always generate max_tokens (benchmarks)


class PredictRequest(SamplingFields):
    """The grader's body: {"prompt": "q"} or {"prompt": ["q1", ...]} (+ optional sampling)."""
    prompt: Union[StrictStr, list[StrictStr]]


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[StrictStr, list[TextPart], None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Body):
    include_usage: StrictBool = False


class JsonSchemaFormat(_Body):
    name: StrictStr = "response"  # OpenAI requires a name; nothing here depends on it
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")  # `schema` shadows BaseModel's
    strict: StrictBool | None = None


class ResponseFormat(_Body):
    """OpenAI's structured output: plain text, any JSON object, or JSON valid against a schema."""
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class OpenAIFields(SamplingFields):
    model: StrictStr
    stop: Stop | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: Annotated[StrictInt, Field(ge=1)] = 1
    logprobs: StrictBool | StrictInt | None = None
    response_format: ResponseFormat | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(OpenAIFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    tools: list | None = None
    # vLLM's extension: variables for the chat template, e.g. {"enable_thinking": true}
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: StrictBool | None = None   # shorthand some clients send at the top level


class CompletionRequest(OpenAIFields):
    prompt: Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]
    echo: StrictBool = False
    suffix: StrictStr | None = None
