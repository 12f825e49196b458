"""Durable local files shared by the site and the coordinator."""
