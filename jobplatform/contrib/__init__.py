"""Integrations with frameworks the platform's users build on."""
