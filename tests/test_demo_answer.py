"""``agentloop demo``'s answer (the simulator's BrowsePolicy over the stdlib docs) reads like an
agent's answer: composed from what it read, every part of the question addressed, each source
cited once (issue 14)."""

from __future__ import annotations

import re

import pytest
from agentloop_tools.stdlib_docs import stdlib_index

from agentloop import Agent, Budget
from agentloop.models.kimi import KimiModel
from agentloop.sim import BrowsePolicy, SimConfig, SimServer

pytestmark = pytest.mark.anyio


async def demo_answer(question: str) -> str:
    async with SimServer(SimConfig(policy=BrowsePolicy(), strict=True)) as sim:
        model = KimiModel(api_key="sk-sim", base_url=sim.base_url)
        agent = Agent(model, tools=stdlib_index().tools(), budget=Budget(max_steps=10))
        try:
            result = await agent.run(question)
        finally:
            await model.aclose()
    assert result.stop_reason == "completed", result.error
    return result.output


def sources(answer: str) -> list[str]:
    return re.findall(r"stdlib:[\w.]+", answer)


async def test_the_default_question_gets_a_composed_answer() -> None:
    answer = await demo_answer("How do I shorten text to fit a width with a placeholder?")
    assert answer.startswith("To shorten text to fit a width with a placeholder, use ")
    assert "`textwrap.shorten(text, width, **kwargs)` [1]" in answer
    assert "placeholder is appended" in answer  # the question's second half
    assert "'Hello [...]'" in answer  # an example that shows it
    assert "(from [" not in answer and "Here is what the documentation says" not in answer
    cited = sources(answer)
    assert cited == ["stdlib:textwrap.shorten"]  # once, in the list of sources
    assert answer.count("[1]") == 2  # its marker where it is used, and in the list


async def test_each_part_of_a_two_part_question_is_answered_from_its_own_source() -> None:
    answer = await demo_answer("How do I compute the median of a list and the mean?")
    paragraphs = answer.split("\n\n")
    assert paragraphs[0].startswith("To compute the median of a list, use `statistics.median")
    assert any(p.startswith("To compute the mean, use `statistics.") for p in paragraphs)
    cited = sources(answer)
    assert len(cited) == len(set(cited)) == 2  # two sources, each cited once
    for n in (1, 2):
        assert answer.count(f"[{n}]") == 2


async def test_a_part_nothing_answers_is_said_so() -> None:
    answer = await demo_answer("How can I copy a file and then delete the original?")
    assert answer.startswith("To copy a file, use `shutil.copy")
    assert "I found nothing on how to delete the original" in answer


def test_the_question_is_split_into_verb_phrases() -> None:
    policy = BrowsePolicy()
    assert policy.parts("How do I read a CSV file and write JSON?") == (
        True,
        ["read a CSV file", "write JSON"],
    )
    assert policy.parts("How do I compute the median and the mean?") == (
        True,
        ["compute the median", "compute the mean"],
    )
    assert policy.parts("How do I compute the mean and median of a list?") == (
        True,
        ["compute the mean and median of a list"],
    )
    assert policy.parts("What does statistics.median return?") == (
        False,
        ["What does statistics.median return"],
    )
