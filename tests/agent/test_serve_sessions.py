"""ovq serve without HTTP: reading request bodies, which messages are new to a session, and the
per-session order of work."""

import asyncio
import threading

import pytest

from ovq.agent.runtime.session import Turn
from ovq.agent.server.protocol import ApiError, Message, parse_chat
from ovq.agent.server.sessions import Conflict, Workers, new_messages

U1, A1, U2, A2, U3 = (
    Message("user", "My locker code is 4471."),
    Message("assistant", "Understood."),
    Message("user", "Tell me about the weather."),
    Message("assistant", "Okay."),
    Message("user", "What is my locker code?"),
)
HELD = [Turn(m.role, m.text) for m in (U1, A1, U2, A2)]


def test_a_fresh_session_takes_every_message_as_given():
    system = Message("system", "Answer briefly.")
    assert new_messages("s", [], True, [system, U1, A1, U2]) == [system, U1, A1, U2]


@pytest.mark.parametrize(
    "messages",
    [
        [U3],  # only the newest message: the session remembers the rest
        [U1, A1, U2, A2, U3],  # the whole conversation resent
        [U2, A2, U3],  # its last turns only (a client that trims its history)
    ],
)
def test_only_what_the_session_does_not_hold_is_new(messages):
    assert new_messages("s", HELD, False, messages) == [U3]


def test_several_new_messages_after_the_history_are_all_new():
    tool = Message("observation", "disk 91% full")
    assert new_messages("s", HELD, False, [U2, A2, tool, U3]) == [tool, U3]


@pytest.mark.parametrize(
    "messages, says",
    [
        ([U1, Message("assistant", "Something else."), U3], "is not the session's turn 2"),
        ([U2, A2, U1, A1, U3], "message 0 (user 'Tell me about the weather.') is not the session's turn 0"),
        ([U1, A1, U2, A2, U1, A1, U3], "history has 6 messages, the session holds 4"),
        ([Message("system", "Be brief."), U3], "did not start with the system message"),
    ],
)
def test_a_history_that_contradicts_the_session_is_a_409_that_says_how_to_go_on(messages, says):
    with pytest.raises(Conflict) as e:
        new_messages("s", HELD, False, messages)
    assert e.value.status == 409 and says in e.value.message
    assert "fork" in e.value.message and "new session" in e.value.message


def test_a_system_message_matches_the_observation_turn_a_session_started_with():
    system = Message("system", "Answer briefly.")
    held = [Turn("observation", "Answer briefly.\n"), *HELD]  # texts compare without outer whitespace
    assert new_messages("s", held, False, [system, U3]) == [U3]
    assert new_messages("s", held, False, [system, U1, A1, U2, A2, U3]) == [U3]


def test_parse_chat_reads_openai_fields_and_defaults():
    body = {
        "model": "any",
        "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi\x07"}],
        "max_tokens": 10,
        "max_completion_tokens": 12,  # the newer name wins
        "stop": "END",
        "seed": 3,
        "user": "trip",
        "stream": True,
        "stream_options": {"include_usage": True},
        "frequency_penalty": 0.5,  # unknown to ovq: ignored
    }
    chat = parse_chat(body, temperature=0.3, max_tokens=99)
    assert chat.session == "trip" and chat.seed == 3 and chat.stream and chat.include_usage
    assert chat.messages == (Message("system", "Be brief."), Message("user", "Hi"))  # control chars cleaned
    assert (chat.sampling.max_tokens, chat.sampling.stop, chat.sampling.temperature) == (12, ("END",), 0.3)
    plain = parse_chat({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]})
    assert plain.session == "default" and plain.sampling.max_tokens == 256 and not plain.stream


@pytest.mark.parametrize(
    "change, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "messages"),
        ({"messages": [{"role": "wizard", "content": "a"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": " "}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, "messages"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"stop": ["a", ""]}, "stop"),
        ({"n": 2}, "n"),
        ({"user": "a/b"}, "user"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ],
)
def test_each_bad_field_is_a_400_that_names_it(change, param):
    body = {"messages": [{"role": "user", "content": "hello"}], **change}
    with pytest.raises(ApiError) as e:
        parse_chat(body)
    assert e.value.status == 400 and e.value.param == param, e.value.message


def test_one_sessions_work_runs_in_the_order_asked_while_other_sessions_go_on():
    async def scenario() -> list:
        workers = Workers(runtime=None, max_concurrent=2)
        release, order = threading.Event(), []
        busy = asyncio.create_task(workers.call("a", lambda: release.wait(10)))
        await asyncio.sleep(0)  # the first call holds session a's queue
        queued = []
        for i in range(5):
            queued.append(asyncio.create_task(workers.call("a", lambda i=i: order.append(i))))
            await asyncio.sleep(0)  # asked in this order
        await workers.call("b", lambda: order.append("b"))  # another session is not held up
        release.set()
        await asyncio.gather(busy, *queued)
        workers.close()
        return order

    assert asyncio.run(scenario()) == ["b", 0, 1, 2, 3, 4]
