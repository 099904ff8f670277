"""The report's questions, one module each: its dataclasses and analysis functions (pure, from runs and
configurations), the per-study analysis the rest shares (`@per_study`, computed once per Study), its finding
functions (Study -> list[Finding]), its section (`section`: Study -> list[Block]) and its plots.

FINDINGS (scaling/report/findings.py) and SECTIONS (scaling/report/sections.py) are the only lists of them.
"""
