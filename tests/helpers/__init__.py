"""Helpers the tests share (no tests here): paths, study builder, planted data, servers, kill."""
