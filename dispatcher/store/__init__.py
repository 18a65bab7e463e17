"""Durable storage of events and deliveries behind one ``Store`` contract."""
