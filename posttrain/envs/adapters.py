"""Environments from two other ecosystems, in posttrain's contract (base.py): verifiers (PrimeIntellect) and
OpenEnv (Meta). Each function returns make(row) -> a fresh Environment for one episode, so a file with

    from posttrain.envs.adapters import verifiers_env
    make = verifiers_env(my_verifiers_env)

is used with env.name=that_file.py:make. Each imports its package only when called, and a missing package is a
UserError naming the install command: pip install 'verifiers==0.4.0' / pip install 'openenv==0.10.0'. The two do
not install into one environment: verifiers 0.4.0 pins mcp==2.0.0, OpenEnv 0.10.0 needs fastmcp 3, which needs
mcp<2 (the Makefile installs verifiers into .venv-vllm, OpenEnv into .venv-openenv).

Token in, token out stays posttrain's: both ecosystems speak chat messages (text), so posttrain samples the ids,
hands the environment the decoded text, and renders the environment's answer once as a chat-template delta
(trajectory.py). Nothing the environment does can change the ids the model sampled.

verifiers_env(env)   a verifiers.v1 Env (taskset + tasks + rewards, multi-turn through Interaction.turn, tools
                     through MCP toolsets). verifiers steps an episode only through its own rollout loop, which
                     asks a model Client; here the policy's seat gets a chat loop run in posttrain's process and
                     a Client whose every request is a posttrain turn (the episode runs on an event loop thread
                     and waits for posttrain's answer). Rewards are the policy trace's (the task's @vf.reward
                     functions and whatever the env records).
openenv_env(...)     an OpenEnv Environment (in process) or EnvClient (its HTTP/WebSocket client): reset/step with
                     the observation's reward and done; you say how a message becomes an Action and an
                     observation becomes messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import queue
import sys
import threading
import time
import types
import uuid
import weakref
from typing import Any, Callable

from posttrain.envs.base import Environment, Step
from posttrain.envs.tools import parse_tool_calls
from posttrain.errors import UserError

VERIFIERS = "verifiers==0.4.0"
OPENENV = "openenv==0.10.0"


def require(module: str, package: str, needed_by: str):
    """`module` imported, or a UserError that names the package and its install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{needed_by} needs {package.split('==')[0]}, which is not installed ({e.name or module} "
                        f"is missing) — fix: pip install '{package}'") from None


def message_text(content) -> str:
    """A chat message's content as text: posttrain renders text; image parts are dropped."""
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def posttrain_message(message: dict) -> dict:
    """An OpenAI wire message as the conversation posttrain renders: role, text content, a tool's name."""
    out = {"role": message.get("role", "user"), "content": message_text(message.get("content"))}
    return out | ({"name": message["name"]} if message.get("name") else {})


# ---------------------------------------------------------------------------------------------------------------
# Tools the environment runs itself: posttrain only needs their schemas for the chat template

JSON_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict}


def json_type(prop: dict) -> type:
    """The Python type for a JSON-schema property (Optional[X] → X: the chat template shows the type)."""
    options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"] or [prop]
    kind = options[0].get("type", "string")
    return JSON_TYPES.get(kind[0] if isinstance(kind, list) else kind, str)


def tool_stub(schema: dict) -> Callable:
    """A function whose tools.tool_schema() is `schema` (an OpenAI function tool, as an environment offers it):
    what ChatDeltas needs to describe a tool that runs inside the environment. Calling it is an error.

    Example:
        >>> stub = tool_stub({"type": "function", "function": {"name": "add", "description": "Add.",
        ...     "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}})
        >>> tool_schema(stub)["function"]["parameters"]["properties"]
        {'a': {'type': 'integer', 'description': 'a'}}
    """
    spec = schema.get("function", schema)
    properties = (spec.get("parameters") or {}).get("properties") or {}
    required = set((spec.get("parameters") or {}).get("required") or [])

    def stub(**arguments):
        raise RuntimeError(f"the tool {spec['name']} runs inside the environment, not in posttrain")

    def describe(name: str, prop: dict) -> str:
        text = " ".join(str(prop.get("description") or prop.get("title") or name).split())
        return text + (f" (choices: {json.dumps(prop['enum'])})" if "enum" in prop else "")

    stub.__name__ = stub.__qualname__ = spec["name"]
    stub.__annotations__ = {name: json_type(prop) for name, prop in properties.items()}
    stub.__signature__ = inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=stub.__annotations__[name],
                          default=inspect.Parameter.empty if name in required else None)
        for name in properties])
    description = " ".join(str(spec.get("description") or spec["name"]).split())
    stub.__doc__ = description + "\n\nArgs:\n" + "".join(f"    {name}: {describe(name, prop)}\n"
                                                         for name, prop in properties.items())
    return stub


# ---------------------------------------------------------------------------------------------------------------
# verifiers

POLICY_HARNESS = "posttrain_policy_harness"  # the harness id the policy's seat is pinned to
POLICY_CLIENTS: dict[str, Any] = {}           # base_url → the CallbackClient of one verifiers_env


class Channel:
    """One episode's line between posttrain's thread and the verifiers event loop: the model requests and the
    episode's end go to posttrain through `events` (a thread-safe queue); posttrain's answer comes back through a
    future on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.events, self.reply = loop, queue.Queue(), None

    async def ask(self, messages: list[dict], tools: list[dict]) -> str:
        """On the loop: hand posttrain a model request and wait for the text it sampled."""
        self.reply = self.loop.create_future()
        self.events.put(("request", messages, tools))
        return await self.reply

    def answer(self, text: str) -> None:
        self.loop.call_soon_threadsafe(self.reply.set_result, text)


def chat_completion(model: str, text: str) -> dict:
    """An OpenAI chat completion carrying posttrain's sampled text: the Hermes tool calls it holds (tools.py) as
    structured tool_calls, the rest as content. A call that cannot be read stays in the text."""
    turn = parse_tool_calls(text)
    if not turn.calls or turn.errors:  # the environment reads it as a plain reply
        message = {"role": "assistant", "content": text}
    else:
        message = {"role": "assistant", "content": turn.content or None,
                   "tool_calls": [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                                   "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                                  for c in turn.calls]}
    return {"id": f"posttrain-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": message,
                                         "finish_reason": "tool_calls" if "tool_calls" in message else "stop"}]}


@contextlib.asynccontextmanager
async def mcp_tools(urls: dict[str, str]):
    """(tool schemas, call(name, arguments) -> text) for a rollout's MCP servers, through verifiers' own MCP
    client (names qualified as SERVER_TOOL, as its chat program offers them)."""
    from verifiers.v1.harnesses.utils.mcp import call_mcp, connect_mcp
    async with contextlib.AsyncExitStack() as stack:
        schemas, dispatch, servers = (await connect_mcp({"mcpServers": {n: {"url": u} for n, u in urls.items()}},
                                                        stack) if urls else ([], {}, {}))

        async def call(name: str, arguments: str) -> str:
            if name not in dispatch:
                return f"error: no tool named {name!r}; the tools are: {', '.join(sorted(dispatch))}"
            try:
                return message_text(await call_mcp(servers, dispatch, name, json.loads(arguments or "{}")))
            except Exception as e:  # the tool's failure goes back to the model, as in ToolEnv
                return f"error: {name} failed: {type(e).__name__}: {e}"

        yield schemas, call


async def chat_loop(client, model: str, messages: list[dict], tools: list[dict], call) -> None:
    """Ask the model; run the tool calls of its reply and ask again, until a reply calls no tool."""
    while True:
        completion = await client.chat.completions.create(model=model, messages=messages,
                                                          **({"tools": tools} if tools else {}))
        reply = completion.choices[0].message
        messages.append(reply.model_dump(exclude_none=True))
        if not reply.tool_calls:
            return
        for c in reply.tool_calls:
            messages.append({"role": "tool", "tool_call_id": c.id, "name": c.function.name,
                             "content": await call(c.function.name, c.function.arguments)})


def define_policy_harness(vf) -> type:
    """The Harness of the policy's seat, registered as a plugin module (verifiers loads harnesses by id)."""
    from openai import AsyncOpenAI
    from verifiers.v1.dialects.chat import message_to_wire
    from verifiers.v1.runtimes import ProgramResult

    class PosttrainPolicyHarness(vf.Harness):
        """verifiers' `null` chat loop (its MCP tools included), run in posttrain's process instead of as a
        uv-installed program: every model call still goes through the rollout's interception endpoint, which
        the Harness contract allows, and needs no download."""
        APPENDS_SYSTEM_PROMPT = SUPPORTS_MCP = SUPPORTS_RESUME = True
        EXECUTES_CODE = NEEDS_CONTAINER = False

        async def launch(self, ctx, trace, runtime, endpoint, secret, mcp_urls, data, tool_interception_url=None):
            system, prompt = self.resolve_prompt(data)
            messages = [{"role": "system", "content": system}] if system else []
            messages += ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else
                         [message_to_wire(m) for m in prompt or []])
            async with AsyncOpenAI(base_url=endpoint, api_key=secret, max_retries=0) as client, \
                    mcp_tools(mcp_urls) as (tools, call):
                await chat_loop(client, ctx.model, messages, tools, call)
            return ProgramResult(exit_code=0, stdout="", stderr="")

    module = types.ModuleType(POLICY_HARNESS)
    module.PosttrainPolicyHarness, module.__all__ = PosttrainPolicyHarness, ["PosttrainPolicyHarness"]
    sys.modules.setdefault(POLICY_HARNESS, module)
    return sys.modules[POLICY_HARNESS].PosttrainPolicyHarness


def define_callback_client(vf) -> type:
    class CallbackClient(vf.Client):
        """The model, as verifiers sees it: a request from a policy trace is handed to that episode's Channel,
        and the text posttrain sampled comes back as the response."""

        def __init__(self):
            self.channels: dict[str, Channel] = {}  # trace id → the episode's channel

        async def get_response(self, dialect, body, sampling, session_id=None, turn=None, headers=None):
            channel = self.channels.get(session_id)
            if channel is None or dialect.upstream_path != "/chat/completions":
                raise RuntimeError("a model request that no posttrain episode waits for (another seat without a "
                                   "client of its own, or a harness that does not speak chat completions)")
            text = await channel.ask(body.get("messages", []), body.get("tools") or [])
            raw = chat_completion(body.get("model", ""), text)
            response = dialect.parse_response(dialect.validate_response(raw))
            response.raw = raw
            return response

        def forget(self, channel: Channel) -> None:
            for trace_id in [t for t, c in self.channels.items() if c is channel]:
                del self.channels[trace_id]

    return CallbackClient


def route_policy_clients() -> None:
    """Make verifiers' interception servers use a verifiers_env's CallbackClient for its base_url: verifiers
    0.4.0 builds each Client from its config (interception.server.resolve_client) and takes no instance."""
    from verifiers.v1.interception import server
    original = server.resolve_client
    if getattr(original, "routes_posttrain", False):
        return

    def resolve_client(config):
        return POLICY_CLIENTS.get(config.base_url) or original(config)

    resolve_client.routes_posttrain = True
    server.resolve_client = resolve_client


def seat_policy(vf, config, role: str | None):
    """(the role the policy plays, the config with that seat on posttrain's harness). A seat's runtime stays as
    pinned; an unpinned one runs locally (the default is a remote Prime sandbox)."""
    from verifiers.v1.configs.agent import agent_config_fields
    seats = agent_config_fields(config)
    if role is None and len(seats) != 1:
        raise UserError(f"this verifiers env has the seats {sorted(seats)} — fix: verifiers_env(..., role=NAME) "
                        "naming the one posttrain trains")
    role = role or next(iter(seats))
    if role not in seats:
        raise UserError(f"verifiers_env: no seat {role!r}; this env has {sorted(seats)}")
    for name, seat in seats.items():
        if name != role and seat.client is None:
            raise UserError(f"verifiers_env: seat {name!r} has no model of its own, so it would be sampled from "
                            f"the policy too — fix: pin env.{name}.client (and model) in the env's config")
    pins = {"harness": vf.HarnessConfig(id=POLICY_HARNESS)}
    if "runtime" not in seats[role].model_fields_set:
        pins["runtime"] = vf.SubprocessConfig()
    return role, config.model_copy(update={role: seats[role].model_copy(update=pins)})


class VerifiersRunner:
    """One verifiers Env serving posttrain's episodes: its event loop on a daemon thread (verifiers is async, the
    contract is not), started at the first episode, with env.serving() (interception, shared tools) held open."""

    def __init__(self, env, role: str | None, model: str, timeout: float):
        vf = require("verifiers.v1", VERIFIERS, "verifiers_env")
        if isinstance(env, str):
            env = vf.load_environment(vf.resolve_env_config({"taskset": {"id": env}}))
        elif not isinstance(env, vf.Env):
            env = env()  # a loader
        define_policy_harness(vf)
        route_policy_clients()
        self.role, config = seat_policy(vf, env.config, role)
        self.env, self.timeout = type(env)(config), timeout
        self.client = define_callback_client(vf)()
        url = f"posttrain://policy/{uuid.uuid4().hex}"
        POLICY_CLIENTS[url] = self.client
        self.ctx = vf.ModelContext(model=model, client=vf.EvalClientConfig(base_url=url, api_key_var="POSTTRAIN"))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        with self.lock:
            if self.loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, daemon=True, name="posttrain-verifiers").start()
                asyncio.run_coroutine_threadsafe(self.env.serving().__aenter__(), loop).result(self.timeout)
                self.loop = loop

    def task(self, row: dict):
        """The task of a row: its fields (or row["task"]) as the taskset's task data, e.g. a verifiers trace's
        task.data, or taskset tasks dumped with [t.data.model_dump(mode="json") for t in env.taskset.take(n)]."""
        taskset = self.env.taskset
        task_type = type(taskset).task_type()
        data = task_type.data_type().model_validate(row.get("task", row))
        if taskset.system_prompt is not None and data.system_prompt is None:
            data = data.model_copy(update={"system_prompt": taskset.system_prompt})
        return task_type(data, taskset.config.task)

    def launch(self, row: dict, channel: Channel):
        """Run one episode of `row` on the loop; its end (or failure) is the channel's last event."""
        def bind(trace):  # the policy's trace (a retry mints a new one) talks through this channel
            if trace.agent is not None and trace.agent.name == self.role:
                self.client.channels[trace.id] = channel

        def unbind(future):  # on any thread (a cancel runs it on the caller's); `channels` is the loop's
            self.loop.call_soon_threadsafe(self.client.forget, channel)
            channel.events.put(("end",))

        future = asyncio.run_coroutine_threadsafe(self.env.run_episode(self.task(row), self.ctx, on_trace=bind),
                                                  self.loop)
        future.add_done_callback(unbind)
        return future


class VerifiersEpisode:
    """One episode of a verifiers Env as a posttrain Environment. make(row) starts the episode (so a batch's
    episodes boot side by side); reset(row) waits for its first model request — the prompt, and the tools
    offered — and each step answers the pending request and returns what the environment added before its next
    one (tool results, its user's turn). The episode's end is the final step, with the policy trace's reward
    (None where the task records no reward: the run's reward sources score the answer).

    `tools` are stubs of the tools offered on the first request (the environment runs them); reading them waits
    for that request too. reset() with another row, or after steps, starts a new episode.

    info per step: {"tool_calls", "tool_errors"}; the last also {"answer", "rewards", "stop"}."""

    def __init__(self, runner: VerifiersRunner, row: dict):
        self.runner, self.future = runner, None
        self.launch(row)

    def launch(self, row: dict) -> None:
        self.close()
        self.runner.start()
        self.row, self.channel, self.opening, self.steps = row, Channel(self.runner.loop), None, 0
        self.future = self.runner.launch(row, self.channel)
        weakref.finalize(self, self.future.cancel)  # an episode posttrain stops early must not wait forever

    @property
    def tools(self) -> list[Callable]:
        self.open()
        return self.offered

    def reset(self, row: dict) -> list[dict]:
        if self.steps or row != self.row:
            self.launch(row)
        return self.open()

    def open(self) -> list[dict]:
        """The opening messages: the episode's first model request (waited for once)."""
        if self.opening is None:
            event = self.next_event()
            if event[0] == "end":
                raise UserError(f"the verifiers episode ended before asking the model: {self.failure()}")
            _, messages, tools = event
            self.offered, self.sent = [tool_stub(t) for t in tools], len(messages)
            self.opening = [posttrain_message(m) for m in messages]
        return self.opening

    def step(self, message: dict) -> Step:
        self.steps += 1
        self.channel.answer(message["content"])
        turn = parse_tool_calls(message["content"])
        event = self.next_event()
        calls = {"tool_calls": len(turn.calls) + len(turn.errors), "tool_errors": len(turn.errors)}
        if event[0] == "end":
            return self.finish(turn.content if turn.calls else message["content"], calls)
        new = [posttrain_message(m) for m in event[1][self.sent + 1:]]  # after the request's echo of our reply
        self.sent = len(event[1])
        calls["tool_errors"] += sum(m["role"] == "tool" and m["content"].startswith("error") for m in new)
        return Step(new, info=calls)

    def finish(self, answer: str, calls: dict) -> Step:
        episode = self.future.result()
        if not episode.ok:
            raise UserError(f"the verifiers episode failed: {self.failure()}")
        trace = [t for t in episode.traces if t.agent is not None and t.agent.name == self.runner.role][-1]
        rewards = {name: r.value for name, r in trace.rewards.items() if r is not None}
        return Step([], reward=trace.reward if rewards else None, done=True,
                    info=calls | {"answer": answer, "rewards": rewards, "stop": trace.stop_condition})

    def next_event(self) -> tuple:
        try:
            return self.channel.events.get(timeout=self.runner.timeout)
        except queue.Empty:
            raise UserError(f"the verifiers episode neither asked the model nor ended in {self.runner.timeout:g} s"
                            " — fix: verifiers_env(..., timeout=SECONDS)") from None

    def failure(self) -> str:
        episode = self.future.result()
        errors = episode.errors + [e for t in episode.traces for e in t.errors]
        return "; ".join(f"{e.type}: {e.message}" for e in errors) or "no error recorded"

    def close(self) -> None:
        if self.future is not None:
            self.future.cancel()


def verifiers_env(env, *, role: str | None = None, model: str = "posttrain-policy",
                  timeout: float = 600.0) -> Callable[[dict], Environment]:
    """make(row) for a verifiers.v1 Env: each episode is the Env's own run() (its taskset's task from `row`, its
    users, game engines, MCP tools, stop conditions and rewards), with posttrain's model in seat `role` (the
    only seat by default; another seat needs a model client of its own).

    env: a vf.Env, a taskset id (loaded with vf.load_environment), or a function returning a vf.Env.
    row: the task data's fields (or row["task"]), e.g. {"prompt": "Guess my number.", "secret": 7}.
    timeout: seconds to wait for the episode's next model request.

    Example (my_env.py, used with env.name=my_env.py:make):
        import verifiers.v1 as vf
        from posttrain.envs.adapters import verifiers_env
        make = verifiers_env(lambda: vf.load_environment(vf.resolve_env_config({"taskset": {"id": "my-game"}})))
    """
    runner = VerifiersRunner(env, role, model, timeout)
    return lambda row: VerifiersEpisode(runner, row)


# ---------------------------------------------------------------------------------------------------------------
# OpenEnv

def outcome(result) -> tuple[Any, float | None, bool]:
    """(observation, reward, done) of what reset/step returned: an Environment's Observation carries reward and
    done itself; an EnvClient's StepResult wraps the observation."""
    observation = getattr(result, "observation", result)
    return observation, None if result.reward is None else float(result.reward), bool(result.done)


class OpenEnvEpisode:
    """One episode of an OpenEnv environment (a fresh one from the factory) as a posttrain Environment: reset's
    observation gives the opening messages, each assistant message becomes an action whose observation gives
    the environment's answer, its reward this turn's reward, its done the end of the episode. An action that
    cannot be built (action_from_message raises ValueError) is answered "error: …" and counted as a tool error.

    info per step: {"tool_calls", "tool_errors"}; the last also {"answer", "metadata"}."""

    def __init__(self, factory: Callable, action_from_message: Callable, messages_from_observation: Callable,
                 reset_kwargs: Callable[[dict], dict], tools: list[Callable]):
        self.factory, self.action_from_message = factory, action_from_message
        self.messages_from_observation, self.reset_kwargs = messages_from_observation, reset_kwargs
        self.tools, self.env = tools, None

    def reset(self, row: dict) -> list[dict]:
        self.close()
        self.env = self.factory()
        observation, _, _ = outcome(self.env.reset(**self.reset_kwargs(row)))
        return list(self.messages_from_observation(observation))

    def step(self, message: dict) -> Step:
        try:
            action = self.action_from_message(message)
        except ValueError as e:  # the model's malformed action goes back to it, as a malformed tool call does
            return Step([{"role": "user", "content": f"error: {e}"}], info={"tool_calls": 1, "tool_errors": 1})
        observation, reward, done = outcome(self.env.step(action))
        if done:
            self.close()
            return Step([], reward=reward, done=True, info={"tool_calls": 0, "tool_errors": 0,
                        "answer": message["content"], "metadata": getattr(observation, "metadata", None)})
        return Step(list(self.messages_from_observation(observation)), reward=reward,
                    info={"tool_calls": 0, "tool_errors": 0})

    def close(self) -> None:
        env, self.env = self.env, None
        if env is not None and hasattr(env, "close"):
            env.close()


def openenv_env(environment_or_client: Callable, action_from_message: Callable[[dict], Any],
                messages_from_observation: Callable[[Any], list[dict]], *,
                reset_kwargs: Callable[[dict], dict] | None = None,
                tools: list[Callable] = ()) -> Callable[[dict], Environment]:
    """make(row) for an OpenEnv environment. Episodes run side by side, so each needs its own environment:
    `environment_or_client` is a factory — an Environment subclass, or a function returning an Environment (in
    process) or an EnvClient (e.g. lambda: MyEnvClient(base_url="http://localhost:8000")).

    action_from_message(message) -> the environment's Action (raise ValueError for a message that is none);
    messages_from_observation(observation) -> the chat messages the model reads (the reset observation's are the
    opening: system and user); reset_kwargs(row) -> reset()'s keyword arguments (default: row.get("reset", {}),
    e.g. {"seed": 3}); tools: functions whose schemas the chat template shows (for an MCP environment).

    Example:
        make = openenv_env(EchoEnvironment, lambda m: EchoAction(message=m["content"]),
                           lambda obs: [{"role": "user", "content": obs.echoed_message}])
    """
    require("openenv.core", OPENENV, "openenv_env")
    if not callable(environment_or_client) or (not isinstance(environment_or_client, type)
                                               and hasattr(environment_or_client, "step")):
        raise UserError("openenv_env needs a factory, not an environment object: episodes run side by side, each "
                        "with its own environment — fix: openenv_env(MyEnvironment, ...) or "
                        "openenv_env(lambda: MyEnvClient(base_url=URL), ...)")
    reset_kwargs = reset_kwargs or (lambda row: dict(row.get("reset", {})))
    return lambda row: OpenEnvEpisode(environment_or_client, action_from_message, messages_from_observation,
                                      reset_kwargs, list(tools))


__all__ = ["OpenEnvEpisode", "VerifiersEpisode", "openenv_env", "tool_stub", "verifiers_env"]
