"""Processors: one module each, found by `keel.streams.discovery` without a central list.

A module here defines one or more instances of `keel.streams.processor` kinds at module level
(by convention `processor = MyView()`). `keel streams new NAME` scaffolds one with tests.
"""
