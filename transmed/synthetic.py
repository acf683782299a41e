"""`python -m transmed.synthetic`, an old spelling (the table: ALIASES in transmed/commands/__init__.py)."""
from transmed.commands import run_alias

run_alias(__name__, __file__)
