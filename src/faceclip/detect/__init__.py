"""faceclip.detect"""
