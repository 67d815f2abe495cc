"""Detector and beam simulator with front-end board emulation."""
