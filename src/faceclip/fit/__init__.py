"""faceclip.fit"""
