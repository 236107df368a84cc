"""Simulated models: a policy decides what the model "says" given the request it received."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, sent verbatim (it may be broken on purpose)
    id: str | None = None


@dataclass(slots=True)
class Turn:
    """One assistant turn. ``reasoning_tokens`` overrides the count of the reasoning text, so a
    test can simulate 40K tokens of thinking without sending them."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning_tokens: int | None = None
    # a finish_reason to report instead of the natural one (e.g. "tool_calls" with no calls,
    # which Kimi endpoints send under load, or "content_filter")
    finish: str | None = None


@dataclass(slots=True)
class PolicyContext:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    thinking: bool
    max_tokens: int
    request_number: int
    tool_choice: Any = None

    @property
    def may_call_tools(self) -> bool:
        return bool(self.tool_choice != "none")

    @property
    def step(self) -> int:
        """Assistant turns already in the history (the n-th call of a run sees n-1)."""
        return sum(
            1 for m in self.messages if m.get("role") == "assistant" and not m.get("partial")
        )

    @property
    def task(self) -> str:
        for m in self.messages:
            if m.get("role") == "user" and isinstance(m.get("content"), str):
                return str(m["content"])
        return ""

    def tool_results(self) -> list[str]:
        return [str(m.get("content", "")) for m in self.messages if m.get("role") == "tool"]

    def function_names(self) -> list[str]:
        """The functions the model may call now (none under ``tool_choice: "none"``)."""
        if not self.may_call_tools:
            return []
        return [
            t["function"]["name"]
            for t in self.tools
            if t.get("type") == "function" and isinstance(t.get("function"), dict)
        ]


Policy = Callable[[PolicyContext], Turn]


class ScriptedPolicy:
    """Replays a list of turns: the n-th assistant step of a conversation gets ``turns[n]``.

    Indexing by the history (not by request count) keeps a script in step when requests are
    retried. An item may be a callable that builds the turn from the context.
    """

    def __init__(self, turns: Sequence[Turn | Callable[[PolicyContext], Turn]]) -> None:
        self.turns = list(turns)
        self.contexts: list[PolicyContext] = []

    def __call__(self, ctx: PolicyContext) -> Turn:
        self.contexts.append(ctx)
        index = min(ctx.step, len(self.turns) - 1)
        item = self.turns[index]
        return item(ctx) if callable(item) else item


def example_value(
    schema: dict[str, Any], hint: str, defs: dict[str, Any] | None = None, seed: int = 0
) -> Any:
    """A small instance that validates against ``schema`` (for the tool-driving policy)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return example_value(defs.get(ref.split("/")[-1], {}), hint, defs, seed)
    if schema.get("enum"):
        return schema["enum"][0]
    if "anyOf" in schema:
        for branch in schema["anyOf"]:
            if branch.get("type") != "null":
                return example_value(branch, hint, defs, seed)
        return None
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string":
        return hint
    if kind == "integer":
        return int(schema.get("minimum", 1)) + seed
    if kind == "number":
        return float(schema.get("minimum", 1.0)) + seed
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        items = schema.get("items", {"type": "string"})
        count = max(1, int(schema.get("minItems", 1)))
        return [example_value(items, hint, defs, seed) for _ in range(count)]
    props = schema.get("properties", {})
    required = schema.get("required", list(props))
    return {
        name: example_value(props[name], hint, defs, seed) for name in required if name in props
    }


class ToolLoopPolicy:
    """Drives a multi-step tool-calling conversation from whatever tools the request offers.

    For ``steps`` steps it calls ``parallel`` tools (cycling through the offered functions, with
    arguments built from their schemas), then answers with a summary of the results it got.
    """

    def __init__(self, steps: int = 3, parallel: int = 1, reasoning_chars: int = 200) -> None:
        self.steps = steps
        self.parallel = parallel
        self.reasoning_chars = reasoning_chars

    def _reasoning(self, text: str) -> str:
        if len(text) >= self.reasoning_chars:
            return text[: self.reasoning_chars]
        return (text + " ") * (self.reasoning_chars // (len(text) + 1)) + text

    def __call__(self, ctx: PolicyContext) -> Turn:
        names = ctx.function_names()
        step = ctx.step
        if names and step < self.steps:
            by_name = {
                t["function"]["name"]: t["function"]
                for t in ctx.tools
                if t.get("type") == "function"
            }
            calls = []
            for k in range(self.parallel):
                name = names[(step * self.parallel + k) % len(names)]
                params = by_name[name].get("parameters") or {}
                n = step * self.parallel + k
                args = example_value(params, f"{ctx.task[:40]} (step {step + 1}.{k + 1})", seed=n)
                calls.append(ToolCall(name, json.dumps(args, ensure_ascii=False)))
            plan = ", ".join(c.name for c in calls)
            return Turn(
                reasoning=self._reasoning(f"Step {step + 1}: to answer I will call {plan}."),
                tool_calls=calls,
            )
        results = ctx.tool_results()
        summary = "; ".join(r[:60] for r in results[-3:]) if results else "no tools were needed"
        return Turn(
            reasoning=self._reasoning("I have what I need and can answer now."),
            content=f"Answer after {len(results)} tool result(s): {summary}",
        )


class EchoPolicy:
    """Answers at once, repeating the last user message."""

    def __call__(self, ctx: PolicyContext) -> Turn:
        last = next((m for m in reversed(ctx.messages) if m.get("role") == "user"), {"content": ""})
        return Turn(reasoning="Echoing.", content=f"echo: {last.get('content')}")


class ResearchPolicy:
    """A long multi-hop search whose answer needs facts found far apart.

    Each step calls ``search`` for the next page; how far it has got is read from the context it
    receives (page arguments of earlier calls, or a "searched up to page N" line in a summary or
    notes). When a tool result in the context holds ``FACT <key> = <value>``, the next turn notes
    it in visible text, as a model writing down a finding would. After ``pages`` pages, or when
    called without tools (a final-answer call), it answers with the facts it can see in the
    context it was sent and nothing else: a fact lost from the context is a wrong answer. Asked
    to "write a summary" (a compaction call), it writes its progress and every fact it sees.

    Each turn thinks ``reasoning_tokens`` of ``reasoning_content`` (billed as output, and kept in
    the history with its turn). With ``max_reasoning_tokens`` the length varies between the two,
    drawn per page from ``seed`` (the same page always gets the same length, however the
    history was edited). The reasoning never names a fact.
    """

    FACT = re.compile(r"FACT (\w+) = (\w+)")
    PAGE = re.compile(r'"page":\s*(\d+)')
    PROGRESS = re.compile(r"[Ss]earched up to page (\d+)")

    def __init__(
        self,
        pages: int = 200,
        reasoning_tokens: int = 250,
        tool: str = "search",
        *,
        max_reasoning_tokens: int | None = None,
        seed: int = 0,
    ) -> None:
        self.pages = pages
        self.reasoning_tokens = reasoning_tokens
        self.reasoning_chars = reasoning_tokens * 4
        self.max_reasoning_tokens = max_reasoning_tokens
        self.seed = seed
        self.tool = tool

    def _facts(self, ctx: PolicyContext) -> dict[str, str]:
        found: dict[str, str] = {}
        for m in ctx.messages:
            for text in (m.get("content"), m.get("reasoning_content")):
                if isinstance(text, str):
                    found.update(self.FACT.findall(text))
        return found

    def _progress(self, ctx: PolicyContext) -> int:
        reached = 0
        for m in ctx.messages:
            for call in m.get("tool_calls") or ():
                for page in self.PAGE.findall(str(call.get("function", {}).get("arguments", ""))):
                    reached = max(reached, int(page))
            if isinstance(m.get("content"), str):
                for page in self.PROGRESS.findall(m["content"]):
                    reached = max(reached, int(page))
        return reached

    def _think(self, text: str, page: int = 0) -> str:
        chars = self.reasoning_chars
        if self.max_reasoning_tokens is not None:
            tokens = random.Random(self.seed * 1_000_003 + page).randint(
                min(self.reasoning_tokens, self.max_reasoning_tokens),
                max(self.reasoning_tokens, self.max_reasoning_tokens),
            )
            chars = tokens * 4
        return (text + " ") * max(1, chars // (len(text) + 1))

    def answer(self, ctx: PolicyContext) -> str:
        facts = self._facts(ctx)
        return "ANSWER: " + "; ".join(f"{k} = {v}" for k, v in sorted(facts.items()))

    def __call__(self, ctx: PolicyContext) -> Turn:
        last = ctx.messages[-1] if ctx.messages else {}
        reached = self._progress(ctx)
        if last.get("role") == "user" and "write a summary" in str(last.get("content", "")).lower():
            facts = self._facts(ctx)
            lines = [f"Searched up to page {reached}."]
            lines += [f"FACT {k} = {v}" for k, v in sorted(facts.items())]
            return Turn(reasoning=self._think("Summarising.", reached), content="\n".join(lines))
        if self.tool not in ctx.function_names() or reached >= self.pages:
            return Turn(
                reasoning=self._think("I can answer now.", reached), content=self.answer(ctx)
            )
        # note what the newest tool results found, so it survives when they are cleared
        new: list[str] = []
        for m in reversed(ctx.messages):
            if m.get("role") != "tool":
                break
            new += [f"FACT {k} = {v}" for k, v in self.FACT.findall(str(m.get("content", "")))]
        page = reached + 1
        note = (" Noted " + "; ".join(new) + ".") if new else ""
        return Turn(
            reasoning=self._think(
                f"Page {reached} read; the next page may hold a missing fact.", page
            ),
            content=f"Searched up to page {reached}.{note}",
            tool_calls=[ToolCall(self.tool, json.dumps({"query": ctx.task[:60], "page": page}))],
        )


_HOW = re.compile(
    r"^\s*(?:how\s+(?:do|can|could|should|would|might)\s+(?:i|you|we|one)\s+|how\s+to\s+|"
    r"what(?:'s|\s+is)\s+the\s+(?:best\s+|right\s+)?way\s+to\s+)(?P<rest>.+?)[\s?.!]*$",
    re.IGNORECASE | re.DOTALL,
)
_AND = re.compile(r"\s*(?:;\s*|,?\s+and\s+then\s+|,?\s+then\s+|,?\s+and\s+(?:also\s+)?)", re.I)
_DETERMINERS = frozenset({"the", "a", "an", "its", "their", "my", "his", "her", "this", "that"})
_CONNECTIVES = re.compile(r"^(?:Otherwise|However|But|Then|So|Also|This|These|It|They)\b")
# verbs a how-to question starts a part with (and a docstring's summary, in the imperative)
_VERBS = frozenset(
    """acquire add align append apply build calculate call catch change check choose close describe
    collapse compare compress compute construct convert copy count create decode decompress
    decrypt dedent delete deserialize determine display download dump emit encode encrypt
    escape evaluate execute extract fetch fill filter find flush format generate get group
    handle hash indent initialize insert iterate join list load lock log make map match
    measure merge move normalize open pad parse pick print quote raise read receive reformat
    register release remove rename replace reset resolve return reverse round run save
    schedule search send serialize set shorten show shuffle sign sort split start stop strip
    test tell time transform translate trim truncate unquote unzip update upload validate
    verify wait wrap write yield zip""".split()
)


def _third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if len(verb) > 2 and verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


@dataclass(slots=True)
class _Page:
    """An opened document: its title, where it lives, its prose sentences and examples."""

    title: str
    path: str
    sentences: list[str]
    examples: list[str]
    rank: int  # the order it was read in


class BrowsePolicy:
    """A small search-then-read model for ``search(query)`` / ``open(id)`` tools.

    It splits the question into its parts ("... and ..."), searches for each (in parallel), opens
    the best hits, then answers each part from what it read: the page that covers the part best
    named first, the sentences that cover the part's words (its summary in the third person), a
    short example when the page has one, and each source cited once, numbered, with a list of
    sources at the end. Everything it says comes from the pages it read."""

    STOP = frozenset(
        """a an and are as at be by can could do does for from get how i in into is it its me my
        of on or should that the their then there this to use using way we what when which who
        why will with would you your""".split()
    )

    def __init__(self, read: int = 2, quote_lines: int = 3) -> None:
        self.read = read
        self.quote_lines = quote_lines  # prose sentences per part, at most

    # -- words -------------------------------------------------------------------------------
    @staticmethod
    def _stem(word: str) -> str:
        if len(word) > 5 and word.endswith("ing"):
            return word[:-3]
        if len(word) > 4 and word.endswith("ed"):
            return word[:-2] if not word.endswith("eed") else word
        if len(word) > 4 and word.endswith("ies"):
            return word[:-3] + "y"
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            return word[:-1]
        return word

    def _words(self, text: str) -> set[str]:
        return {
            self._stem(w) for w in re.findall(r"[a-z0-9_]+", text.lower()) if w not in self.STOP
        }

    # -- the question ------------------------------------------------------------------------
    def parts(self, task: str) -> tuple[bool, list[str]]:
        """Whether the task asks how to do something, and its parts (each a verb phrase when it
        does: "read a CSV file and write JSON" -> ["read a CSV file", "write JSON"]; a part that
        starts with an article shares the verb before it: "compute the median and the mean")."""
        match = _HOW.match(task)
        if not match:
            return False, [task.strip().rstrip("?.! ")]
        pieces = [p.strip() for p in _AND.split(match["rest"]) if p.strip()]
        parts: list[str] = []
        for piece in pieces:
            first = piece.split()[0].lower()
            if parts and first in _DETERMINERS:
                piece = f"{parts[0].split()[0]} {piece}"
            elif parts and first not in _VERBS:  # "the mean and median": one part
                parts[-1] = f"{parts[-1]} and {piece}"
                continue
            parts.append(piece)
        return True, parts[:3] or [match["rest"]]

    # -- what was found ----------------------------------------------------------------------
    @staticmethod
    def _calls(ctx: PolicyContext) -> list[tuple[str, dict[str, Any], str]]:
        """(tool name, arguments, result) of every call answered so far, in order."""
        answers = {
            m.get("tool_call_id"): str(m.get("content", ""))
            for m in ctx.messages
            if m.get("role") == "tool"
        }
        calls: list[tuple[str, dict[str, Any], str]] = []
        for m in ctx.messages:
            for call in m.get("tool_calls") or ():
                function = call.get("function") or {}
                try:
                    arguments = json.loads(function.get("arguments") or "{}")
                except ValueError:
                    arguments = {}
                if call.get("id") in answers and isinstance(arguments, dict):
                    calls.append((str(function.get("name")), arguments, answers[call["id"]]))
        return calls

    @staticmethod
    def _hits(result: str) -> list[tuple[int, str, str]]:
        """(id, title, snippet) of each hit of a search result."""
        found = []
        for line in result.splitlines():
            hit = re.match(r"^\[(\d+)\] (.*?)(?: — (.*))?$", line)
            if hit:
                snippet = (hit[3] or "").replace("**", "").strip("… ")
                found.append((int(hit[1]), hit[2], snippet))
        return found

    @staticmethod
    def _page(result: str, rank: int) -> _Page | None:
        lines = result.splitlines()
        head = re.match(r"^\[\d+\] (.*) \((.*)\)$", lines[0]) if lines else None
        if head is None:
            return None
        title, path = head[1], head[2]
        body = lines[1:]
        if body and body[0].startswith(("[characters", "[offset")):
            body = body[1:]
        sentences: list[str] = []
        examples: list[str] = []
        for block in re.split(r"\n\s*\n", "\n".join(body)):
            rows = [row.rstrip() for row in block.strip("\n").splitlines() if row.strip()]
            if not rows:
                continue
            if rows[0].lstrip().startswith(">>>"):
                examples.append("\n".join(row.strip() for row in rows[:4]))
                continue
            prose = [
                row.strip()
                for row in rows
                if not row.startswith("    ")  # code
                and not re.fullmatch(r"[\s=\-~^*]+", row)  # rules and underlines
                and not re.search(r"\S\s{3,}\S", row)  # table rows
            ]
            text = " ".join(prose).strip()
            if not text or text == title or (len(prose) == 1 and not text.endswith((".", ":"))):
                continue  # the signature line, a heading
            text = re.sub(r"::$", ":", text)
            sentences += [
                s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z*`'\"(])", text) if s.strip()
            ]
        return _Page(title, path, sentences, examples, rank)

    # -- composing ---------------------------------------------------------------------------
    @staticmethod
    def _name(title: str) -> str:
        if title.startswith("module "):
            return f"the `{title.removeprefix('module ').strip()}` module"
        return f"`{title}`"

    @staticmethod
    def _describe(sentence: str, subject: str = "it") -> str:
        """A docstring's imperative sentence as a description: "Return the median" -> "it
        returns the median" ("Convert x and compute y" -> "it converts x and computes y");
        anything else is quoted as it is."""
        first = re.match(r"^([A-Z][a-z]+)\b(.*)$", sentence, re.DOTALL)
        if not (first and first[1].lower() in _VERBS):
            return f"its documentation says: {sentence}" if subject == "it" else sentence
        rest = re.sub(
            r"\b(and|or) ([a-z]+)\b",
            lambda m: f"{m[1]} {_third_person(m[2])}" if m[2] in _VERBS else m[0],
            first[2],
        )
        return f"{subject} {_third_person(first[1].lower())}{rest}"

    def _pick(self, page: _Page, wanted: set[str]) -> list[int]:
        """Indexes of the page's sentences that cover ``wanted``: its summary first, then the
        sentences covering the most words still uncovered."""
        if not page.sentences:
            return []
        chosen = [0]
        left = wanted - self._words(page.sentences[0])
        while left and len(chosen) < self.quote_lines:
            best = max(
                (i for i in range(len(page.sentences)) if i not in chosen),
                key=lambda i: (len(left & self._words(page.sentences[i])), -i),
                default=None,
            )
            if best is None or not left & self._words(page.sentences[best]):
                break
            chosen.append(best)
            left -= self._words(page.sentences[best])
        for i in list(chosen):  # "Otherwise, ..." needs the sentence before it
            if i > 0 and i - 1 not in chosen and _CONNECTIVES.match(page.sentences[i]):
                chosen.append(i - 1)
        return sorted(chosen)

    def answer(self, task: str, pages: list[_Page]) -> str:
        how, parts = self.parts(task)
        cited: dict[str, int] = {}
        paragraphs: list[str] = []
        for part in parts:
            wanted = self._words(part)
            page = max(
                pages,
                key=lambda p: (
                    len(wanted & self._words(" ".join([p.title, *p.sentences]))),
                    -p.rank,
                ),
            )
            if not wanted & self._words(" ".join([page.title, *page.sentences])):
                paragraphs.append(f"I found nothing on how to {part} in the pages I read.")
                continue
            if page.path not in cited:
                cited[page.path] = len(cited) + 1
                mark = f" [{cited[page.path]}]"
            else:
                mark = ""
            picked = self._pick(page, wanted)
            lead = f"To {part}, use" if how else "See"
            text = f"{lead} {self._name(page.title)}{mark}"
            if picked:
                first, *rest = (page.sentences[i] for i in picked)
                text += ": " + self._describe(first)
                if rest:
                    text += " " + " ".join(self._describe(r, "It") for r in rest)
            else:
                text += "."
            if not text.endswith((".", ":")):
                text += "."
            lines: list[str] = []
            for example in page.examples:  # up to four lines of examples that show a result
                rows = example.splitlines()
                if len(rows) > 1 and len(lines) + len(rows) <= 4:
                    lines += rows
            if lines:
                if text.endswith("."):
                    text = text[:-1] + ", for example:"
                text += "\n\n" + "\n".join("    " + line for line in lines)
            # a part no sentence of its page covers: what the other pages say about it
            covered = self._words(text)
            for other in pages:
                if other is page or not wanted - covered:
                    continue
                index = next(
                    (
                        i
                        for i, s in enumerate(other.sentences)
                        if (wanted - covered) & self._words(s)
                    ),
                    None,
                )
                if index is None:
                    continue
                if other.path not in cited:
                    cited[other.path] = len(cited) + 1
                    note = f" [{cited[other.path]}]"
                else:
                    note = ""
                text += (
                    f"\n\nSee also {self._name(other.title)}{note}: "
                    f"{self._describe(other.sentences[index])}"
                )
                covered |= self._words(other.sentences[index])
            paragraphs.append(text)
        sources = "\n".join(f"[{n}] {path}" for path, n in cited.items())
        return "\n\n".join(paragraphs) + "\n\nSources:\n" + sources

    def __call__(self, ctx: PolicyContext) -> Turn:
        names = ctx.function_names()
        calls = self._calls(ctx)
        searches = [(args, result) for name, args, result in calls if name == "search"]
        opened = [result for name, _, result in calls if name == "open"]
        _, parts = self.parts(ctx.task)
        if "search" in names and not searches:
            queries = parts if len(parts) > 1 else [ctx.task]
            plan = "the task's key terms" if len(queries) == 1 else "; ".join(queries)
            return Turn(
                reasoning=f"I should search the collection for {plan} first.",
                tool_calls=[
                    ToolCall("search", json.dumps({"query": q, "limit": 5})) for q in queries
                ],
            )
        hit_lists = [self._hits(result) for _, result in searches]
        if "open" in names and not opened and any(hit_lists):
            picked: list[int] = []
            per_search = self.read if len(hit_lists) == 1 else 1
            for hits in hit_lists:
                fresh = [h[0] for h in hits if h[0] not in picked]
                picked += fresh[:per_search]
            shown = ", ".join(str(p) for p in picked)
            return Turn(
                reasoning=f"The best hits look like {shown}; I will read them.",
                tool_calls=[ToolCall("open", json.dumps({"id": p})) for p in picked],
            )
        pages = [page for rank, r in enumerate(opened) if (page := self._page(r, rank))]
        if not pages:  # nothing opened: answer from the search snippets
            pages = [
                _Page(title, f"search hit {id_}", [snippet] if snippet else [], [], rank)
                for rank, (id_, title, snippet) in enumerate(h for hits in hit_lists for h in hits)
            ]
        wanted = self._words(ctx.task)
        if not any(wanted & self._words(" ".join([p.title, *p.sentences])) for p in pages):
            return Turn(
                reasoning="Nothing relevant came back.",
                content="I searched the documentation but found nothing that answers this.",
            )
        return Turn(
            reasoning="I have read the pages; I can answer each part of the question from them.",
            content=self.answer(ctx.task, pages),
        )


POLICIES: dict[str, Callable[[], Policy]] = {
    "tools": ToolLoopPolicy,
    "echo": EchoPolicy,
    "research": ResearchPolicy,
    "browse": BrowsePolicy,
}
