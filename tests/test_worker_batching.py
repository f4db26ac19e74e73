"""The batch loop with the real model: shared decode steps, reuse, stops, cancel, meters."""

from __future__ import annotations

import pytest

from llmo.worker.batching import Cancelled, Delta, Done, Engine, Request
from llmo.worker.llm import HOLDER_CTX, LoadSpec, open_llama
from llmo.worker.meter import Meter
from llmo.worker.sampling import SamplingParams
from tests.worker_fixtures import model_path  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = ("One, two, three, four,", "The capital of France is", "Once upon a time, there")
INSTRUCTIONS = (
    "You are a careful assistant that reads one product review at a time and answers "
    "with a single word describing its overall sentiment: positive, negative or mixed. "
    "Read the whole review before answering; ignore the reviewer's spelling mistakes, "
    "quoted prices and the names of shops. Sarcasm counts against the product. A review "
    "that praises the delivery but not the product is negative. A review that praises "
    "the product but complains about the delivery is mixed. Answer in lower case. "
)


@pytest.fixture(scope="module")
def llm(model_path):  # noqa: F811
    llm = open_llama(LoadSpec(path=str(model_path)), n_ctx=HOLDER_CTX)
    yield llm
    llm.close()


@pytest.fixture
def engines(llm):
    made: list[Engine] = []

    def make(parallel: int = 4, ctx: int = 256, n_batch: int = 512) -> Engine:
        engine = Engine(llm, parallel=parallel, ctx=ctx, n_batch=n_batch)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def tokens(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode(), add_bos=True, special=True)


def no_end(llm) -> SamplingParams:
    """Greedy, with end-of-generation banned: the request runs to its limit."""
    ends = {llm.token_eos(), *llm.tokenize(b"<end_of_turn>", add_bos=False, special=True)}
    return SamplingParams(temperature=0.0, logit_bias=tuple((t, -1e9) for t in ends))


def run(engine: Engine, llm, text: str, **kw) -> Done:
    kw.setdefault("sampling", GREEDY)
    return engine.submit(Request(prompt=tokens(llm, text), **kw)).result(timeout=120)


def first_piece(request: Request) -> None:
    """Wait until ``request`` has streamed text (its prompt is in the cache)."""
    event = request.events.get(timeout=120)
    assert isinstance(event, Delta), event


@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_requests_decode_in_one_batch(engines, llm, n):
    engine = engines(parallel=4)
    sampling = no_end(llm)
    requests = [
        engine.submit(Request(prompt=tokens(llm, p), sampling=sampling, max_tokens=12))
        for p in PROMPTS[:n]
    ]
    done = [r.result(timeout=120) for r in requests]
    assert all(d.completion_tokens == 12 for d in done)
    print(f"decode steps by sequences carried: {dict(engine.steps_by_width)}")
    assert engine.peak_width == n
    # Every request ran to 12 tokens; the steps that carried all n of them
    # are the steps in which they generated together.
    assert engine.steps_by_width[n] >= 1


def test_greedy_text_is_the_same_alone_and_batched(engines, llm):
    alone = [run(engines(parallel=1), llm, p, max_tokens=12).text for p in PROMPTS]
    engine = engines(parallel=4)
    requests = [
        engine.submit(Request(prompt=tokens(llm, p), sampling=GREEDY, max_tokens=12))
        for p in PROMPTS
    ]
    together = [r.result(timeout=120).text for r in requests]
    assert engine.peak_width >= 2
    # llama.cpp's float sums depend on how a step's batch is made up, so a greedy
    # choice between two near-equal tokens may flip later in a text; each sequence
    # must still continue its own prompt, not another's: the first words agree.
    assert [t.split()[:2] for t in together] == [a.split()[:2] for a in alone]


def test_a_cancelled_request_leaves_and_frees_its_slot(engines, llm):
    engine = engines(parallel=1)
    meter = Meter("b:t:1")
    long = engine.submit(
        Request(prompt=tokens(llm, PROMPTS[0]), sampling=no_end(llm), max_tokens=None, meter=meter)
    )
    first_piece(long)
    long.cancel()
    with pytest.raises(Cancelled):
        long.result(timeout=120)
    assert 0 < meter.tokens < 256 - len(long.prompt)
    assert meter.gen_started is None and meter.gen_s > 0
    # The only slot is free again: a new request is served.
    assert run(engine, llm, PROMPTS[1], max_tokens=2).completion_tokens == 2
    # An attempt that ends stops its requests the same way.
    ended = Meter("b:t:2")
    request = engine.submit(
        Request(prompt=tokens(llm, PROMPTS[2]), sampling=no_end(llm), max_tokens=None, meter=ended)
    )
    first_piece(request)
    ended.cancelled = True
    with pytest.raises(Cancelled, match="attempt ended"):
        request.result(timeout=120)


def test_stop_strings_are_cut_and_never_streamed(engines, llm):
    engine = engines()
    free = run(engine, llm, PROMPTS[0], max_tokens=12)
    assert free.text.startswith(" five, six, seven")
    request = engine.submit(
        Request(prompt=tokens(llm, PROMPTS[0]), sampling=GREEDY, max_tokens=12, stop=(" seven",))
    )
    streamed = []
    while True:
        event = request.events.get(timeout=120)
        if isinstance(event, Done):
            break
        streamed.append(event.text)
    assert event.text == " five, six," and event.finish_reason == "stop"
    assert "".join(streamed) == event.text
    assert event.completion_tokens < 12


def test_max_tokens_and_the_context_cap(engines, llm):
    engine = engines(ctx=48)
    three = run(engine, llm, PROMPTS[0], max_tokens=3)
    assert three.completion_tokens == 3 and three.finish_reason == "length" and not three.capped
    prompt = tokens(llm, PROMPTS[0])
    capped = run(engine, llm, PROMPTS[0], max_tokens=1000, sampling=no_end(llm))
    assert capped.completion_tokens == 48 - len(prompt)
    assert capped.finish_reason == "length" and capped.capped
    with pytest.raises(ValueError, match="context"):
        engine.submit(Request(prompt=prompt * 10))


def test_a_shared_prefix_is_copied_not_recomputed(engines, llm):
    """The text with reuse equals the text computed without it, in the same chunks.

    llama.cpp's float sums depend on how a prompt is split into decode chunks
    (a prompt computed as 96 + 8 tokens may pick another near-tied token than
    one computed as 104 at once, reuse or not), so the reference computes the
    prompt from scratch split where the reuse split it.
    """
    first, second, third = (
        INSTRUCTIONS + f"Review: {r}\nSentiment:"
        for r in ("Great kettle, boils fast.", "It broke in a week.", "Nice, but late.")
    )
    prefix = len(tokens(llm, INSTRUCTIONS))

    def without_reuse(text: str, split: int) -> str:
        return run(engines(parallel=1, n_batch=split), llm, text, max_tokens=4).text

    engine = engines(parallel=2)
    a = run(engine, llm, first, max_tokens=4)
    assert a.cached_tokens == 0
    # From a finished slot, kept after its request ended.
    b = run(engine, llm, second, max_tokens=4)
    assert b.cached_tokens >= prefix - 1
    assert b.text == without_reuse(second, b.cached_tokens)
    # From a running slot: the newcomer copies the prefix into its own slot.
    long = engine.submit(Request(prompt=tokens(llm, first), sampling=no_end(llm), max_tokens=40))
    first_piece(long)
    c = run(engine, llm, third, max_tokens=4)
    assert c.cached_tokens >= prefix - 1
    assert c.text == without_reuse(third, c.cached_tokens)
    long.result(timeout=120)
    print(f"prompt tokens reused: b={b.cached_tokens}, c={c.cached_tokens} of prefix {prefix}")


def test_requests_arriving_together_compute_their_shared_prefix_once(engines, llm):
    engine = engines(parallel=4)
    prefix = len(tokens(llm, INSTRUCTIONS))
    requests = [
        Request(
            prompt=tokens(llm, INSTRUCTIONS + f"Review: {r}\nSentiment:"),
            sampling=GREEDY,
            max_tokens=4,
        )
        for r in ("Great kettle.", "It broke.", "Nice, but late.")
    ]
    engine.submit_all(requests)  # all three in the loop's same turn
    done = [r.result(timeout=120) for r in requests]
    assert done[0].cached_tokens == 0
    assert all(d.cached_tokens >= prefix - 1 for d in done[1:]), done


def test_meters_count_what_usage_reports(engines, llm):
    engine = engines()
    meter = Meter("b:t:1")
    requests = [
        engine.submit(Request(prompt=tokens(llm, p), sampling=GREEDY, max_tokens=8, meter=meter))
        for p in PROMPTS
    ]
    done = [r.result(timeout=120) for r in requests]
    assert meter.tokens == sum(d.completion_tokens for d in done) > 0
    assert meter.prompt_tokens == sum(d.prompt_tokens for d in done)
    assert meter.cached_tokens == sum(d.cached_tokens for d in done)
    assert engine.total_tokens == meter.tokens
    assert meter.gen_started is None and meter.gen_s > 0 and meter.tok_s(0.0) > 0


def test_closing_cancels_running_and_waiting_requests_cleanly(llm):
    engine = Engine(llm, parallel=1, ctx=256)
    sampling = no_end(llm)
    running = engine.submit(
        Request(prompt=tokens(llm, PROMPTS[0]), sampling=sampling, max_tokens=None)
    )
    waiting = engine.submit(Request(prompt=tokens(llm, PROMPTS[1]), sampling=sampling))
    first_piece(running)
    engine.close()  # returns once the batch thread has stopped; then the context is freed
    for request in (running, waiting):
        with pytest.raises(Cancelled, match="unloading"):
            request.result(timeout=10)
    with pytest.raises(Cancelled):
        engine.submit(Request(prompt=tokens(llm, PROMPTS[2])))
