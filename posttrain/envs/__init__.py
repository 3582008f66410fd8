"""Multi-turn environments and tools (DESIGN §3 "Environments").

    env.reset(row) -> messages                         base.py: the contract, and ToolEnv (tools + a verifier)
    env.step(assistant_message) -> Step(messages, reward | None, done, info)
    tools.py        tool schemas from type hints and docstrings, tool calls parsed (errors answered, counted),
                    concurrent calls with a timeout
    trajectory.py   token in, token out: the exact sampled ids (mask 1) and the environment's ids rendered once
                    as chat-template deltas (mask 0); run_episodes drives many episodes side by side
"""

from posttrain.envs.base import Environment, Step, ToolEnv
from posttrain.envs.tools import ParsedTurn, ToolCall, call_tools, parse_tool_calls, tool_schema
from posttrain.envs.trajectory import ChatDeltas, Trajectory, run_episodes

__all__ = ["ChatDeltas", "Environment", "ParsedTurn", "Step", "ToolCall", "ToolEnv", "Trajectory", "call_tools",
           "parse_tool_calls", "run_episodes", "tool_schema"]
