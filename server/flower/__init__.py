"""Flower adapters of the coordinator: the strategies (thin subclasses of Flower 1.41's own), with
recording, update checks, k-of-n rounds with a deadline, and resume. Only this package and
server/app.py import flwr on the coordinator side."""
