//! Clerk page.
