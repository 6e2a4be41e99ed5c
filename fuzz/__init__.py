"""Fuzzing and fault-injection harnesses for imgcrypt's parsers and writers.

:mod:`fuzz.targets` names every entry point that reads attacker-controlled bytes,
:mod:`fuzz.seeds` builds small valid inputs for them, :mod:`fuzz.crash` kills the CLI at
chosen points and checks what it left behind. ``scripts/fuzz.py`` (``make fuzz``) drives the
long runs; ``tests/security/test_security_*.py`` run the quick versions.
"""
