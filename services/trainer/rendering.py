"""How an agent episode becomes one token sequence: the contract SFT and the rollout share.

An episode is a plain concatenation of separately tokenised segments (docs/sft.md):

    prompt        the system/user messages rendered once (`render_prompt`), ending with an open
                  assistant turn when the tokenizer has a chat template       loss mask 0
    assistant     the model's text up to and including its tool-call stop tag (`</code>`)
                                                                               loss mask 1
    observation   the tool's result wrapped by `render_observation`:
                  "\\n<output>\\n" + result + "\\n</output>\\n" (code_tags)     loss mask 0
    assistant     ... and so on; the last assistant segment is followed by the EOS token id
                                                                               loss mask 1

No chat template is applied between turns: the whole episode is ONE assistant turn in which tool
results are spliced, exactly as the agent loop appends them to the token ids it sends vLLM.
Each segment is tokenised on its own (`add_special_tokens=False`) and the ids concatenated;
the text is never re-tokenised as a whole (tags are single tokens in agentrl.common.models
tokenizers, so joining never changes ids there).

Nothing here imports torch: the rollout can apply the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agentrl.common.tool_formats import get_format

# Result tags per `RolloutConfig.tool_format`: code interpreter (Open-AgentRL `<output>`),
# Search-R1 `<information>`, Hermes/Qwen `<tool_response>`.
PROMPT_ROLES = ("system", "user")


@dataclass(frozen=True)
class Segment:
    """A piece of an episode: its text and whether the model produced it (trained on)."""

    role: Literal["prompt", "assistant", "observation"]
    text: str

    @property
    def trained(self) -> bool:
        return self.role == "assistant"


def render_observation(output: str, tool_format: str = "code_tags") -> str:
    """The text spliced after a tool call: the result verbatim, in its tags — the very function
    the rollout's agent loop appends with (agentrl.common.tool_formats), so SFT data and RL
    trajectories tokenise alike."""
    return get_format(tool_format).render_observation(output)


def render_prompt(
    messages: Sequence[dict[str, str]],
    tokenizer: Any,
    prompt_format: Literal["chat_template", "plain"] = "chat_template",
) -> str:
    """System/user messages as prompt text (the RL driver renders data-set prompts the same way).

    `chat_template`: the tokenizer's template with an open assistant turn (generation prompt);
    `plain`: the contents joined by newlines, ending with one.
    """
    for message in messages:
        if message.get("role") not in PROMPT_ROLES:
            raise ValueError(f"prompt messages must be system or user, got {message.get('role')!r}")
    if prompt_format == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; set sft.prompt_format: plain")
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
    if prompt_format == "plain":
        return "".join(m["content"] + "\n" for m in messages)
    raise ValueError(f"unknown prompt_format {prompt_format!r}; use chat_template or plain")


def episode_segments(
    messages: Sequence[dict[str, Any]],
    tokenizer: Any,
    tool_format: str,
    prompt_format: Literal["chat_template", "plain"] = "chat_template",
    where: str = "trajectory",
) -> list[Segment]:
    """Segments of a chat trajectory: leading system/user messages, then assistant and tool
    messages only, ending with an assistant message. ValueError names `where` and the message."""
    if not messages:
        raise ValueError(f"{where}: no messages")
    split = 0
    while split < len(messages) and messages[split].get("role") in PROMPT_ROLES:
        split += 1
    if split == 0:
        raise ValueError(
            f"{where}: starts with {messages[0].get('role')!r}; the first message "
            "must be system or user"
        )
    segments = [Segment("prompt", render_prompt(messages[:split], tokenizer, prompt_format))]
    for index in range(split, len(messages)):
        message = messages[index]
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            raise ValueError(f"{where}: message {index} has no text content")  # noqa: TRY004 (bad input data)
        if role == "assistant":
            segments.append(Segment("assistant", content))
        elif role == "tool":
            if segments[-1].role != "assistant":
                raise ValueError(
                    f"{where}: message {index} (tool) must follow an assistant "
                    "message that made the call"
                )
            open_tag = get_format(tool_format).observation_open
            if content.lstrip().startswith(open_tag):
                raise ValueError(
                    f"{where}: message {index} (tool) is already wrapped in "
                    f"{open_tag}; store the raw tool result, the trainer wraps it"
                )
            segments.append(Segment("observation", render_observation(content, tool_format)))
        else:
            raise ValueError(
                f"{where}: message {index} has role {role!r}; after the prompt "
                "only assistant and tool messages may follow"
            )
    if segments[-1].role != "assistant":
        raise ValueError(f"{where}: the last message must be the assistant's final answer")
    return segments


def tokenize_segments(
    segments: Sequence[Segment], tokenizer: Any, append_eos: bool = True
) -> tuple[list[int], list[int]]:
    """(token ids, loss mask): each segment tokenised alone; EOS after the last, trained on."""
    token_ids: list[int] = []
    loss_mask: list[int] = []
    for segment in segments:
        ids = tokenizer(segment.text, add_special_tokens=False).input_ids
        token_ids.extend(ids)
        loss_mask.extend([int(segment.trained)] * len(ids))
    if append_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token; the model could not learn to stop")
        token_ids.append(tokenizer.eos_token_id)
        loss_mask.append(1)
    return token_ids, loss_mask
