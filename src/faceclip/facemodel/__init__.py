"""faceclip.facemodel"""
