"""Keel core: settings, Kafka client factories, logging, the local stack and the `keel` command.

Components (`schemas`, `producers`, `streams`, `consumers`, `connectors`) import this
package; it never imports them. They plug commands and local-stack services in through
the `keel.commands` and `keel.services` entry points.
"""

__version__ = "0.1.0"
