# Makes the top-level modules (rules.py, ops.py, ...) importable from tests/.
