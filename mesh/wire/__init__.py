"""Connections and the NATS protocol hot path, on nats-py: the only place that
touches nats-py's private attributes.

Modules: ``connection`` (connect with retries and the server version check;
installs ``protocol`` on every connection), ``protocol`` (direct inboxes, a
lean parser, pre-built publishes and headers, ack subjects), ``publisher``
(pipelined request/reply: JetStream publishes and double acks), ``puller``
(the one JetStream pull client, and its request/response pulls), ``consumer``
(the one consumer loop: batches into a handler, a bounded stop), ``stream`` (a
continuous pull on the same client), ``delivery`` (inline callbacks and shared
deadlines). Imports core only. No facade: callers import the module they use.
"""
