"""faceclip.train"""
