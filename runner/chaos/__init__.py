"""The kill-and-restart harness behind `runner chaos`: run rounds, plan them, judge them, draw them.

run.py drives real supervisor processes and kills them; plan.py says when and what to
kill; verdict.py judges what executed against what is allowed; timeline.py draws a
round. The command line (runner/cli/chaos.py) imports this package, never the reverse.
"""
