"""calculations"""
