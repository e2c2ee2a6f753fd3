"""faceclip.evaluate"""
