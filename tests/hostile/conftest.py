"""The hostile corpus: bad inputs, faults and misuses across every command.

Each case asserts what an operator's scheduler and a marketer both need: the exit code the command
promises, one line naming the problem, no traceback, nothing half-written, and the stores intact.
"""
