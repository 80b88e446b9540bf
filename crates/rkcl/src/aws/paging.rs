//! Following page tokens: the paging drivers of ListShards and
//! ListStreamConsumers, kept apart from the client so that they are tested
//! without a server.

use std::collections::HashSet;
use std::hash::Hash;

use crate::error::{Error, Result, Service};

/// Calls `fetch` with each page's token until a page has none, and gathers
/// the items. A token that repeats ends the listing with an error instead of
/// looping forever.
pub(super) async fn collect_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>)>>,
{
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    let mut seen = std::collections::HashSet::new();
    loop {
        let (page, next) = fetch(token.take()).await?;
        items.extend(page);
        match next {
            Some(next) if !next.is_empty() => {
                if !seen.insert(next.clone()) {
                    return Err(Error::Service {
                        service: Service::Kinesis,
                        code: "RepeatedNextToken".into(),
                        message: "ListShards returned a page token it had returned before".into(),
                        retryable: true,
                    });
                }
                token = Some(next);
            }
            _ => return Ok(items),
        }
    }
}

/// Calls `fetch` with each page's token and gathers the items that `key`
/// has not seen before, until a page has no token, a page adds nothing
/// new, or `max_pages` pages were read.
///
/// For listings whose token may not move on (a service that always
/// answers the same token): the items decide when the listing is done,
/// not the token.
pub(super) async fn collect_new_pages<T, K, F, Fut>(
    max_pages: usize,
    key: impl Fn(&T) -> K,
    mut fetch: F,
) -> Result<Vec<T>>
where
    K: Eq + Hash,
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>)>>,
{
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    let mut token: Option<String> = None;
    for _ in 0..max_pages.max(1) {
        let (page, next) = fetch(token.take()).await?;
        let before = items.len();
        items.extend(page.into_iter().filter(|item| seen.insert(key(item))));
        match next {
            Some(next) if !next.is_empty() && items.len() > before => token = Some(next),
            _ => break,
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// Pages as a service would hand them out: (items, next token).
    fn fake_pages(
        pages: Vec<(Vec<u32>, Option<&str>)>,
    ) -> Mutex<VecDeque<(Vec<u32>, Option<String>)>> {
        Mutex::new(
            pages
                .into_iter()
                .map(|(items, token)| (items, token.map(str::to_owned)))
                .collect(),
        )
    }

    #[tokio::test]
    async fn follows_next_tokens_through_every_page() {
        let pages = fake_pages(vec![
            (vec![1, 2], Some("a")),
            (vec![], Some("b")),
            (vec![3], Some("c")),
            (vec![4, 5], None),
        ]);
        let tokens = Mutex::new(Vec::new());
        let items = collect_pages(|token| {
            tokens.lock().unwrap().push(token);
            let page = pages.lock().unwrap().pop_front().unwrap();
            async move { Ok(page) }
        })
        .await
        .unwrap();
        assert_eq!(items, vec![1, 2, 3, 4, 5]);
        assert_eq!(
            *tokens.lock().unwrap(),
            vec![None, Some("a".into()), Some("b".into()), Some("c".into())]
        );
    }

    #[tokio::test]
    async fn an_empty_token_ends_and_a_repeated_one_is_an_error() {
        let pages = fake_pages(vec![(vec![1], Some(""))]);
        let items = collect_pages(|_| {
            let page = pages.lock().unwrap().pop_front().unwrap();
            async move { Ok(page) }
        })
        .await
        .unwrap();
        assert_eq!(items, vec![1]);

        let pages = fake_pages(vec![(vec![1], Some("x")), (vec![2], Some("x"))]);
        let result = collect_pages(|_| {
            let page = pages.lock().unwrap().pop_front().unwrap();
            async move { Ok(page) }
        })
        .await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn an_error_on_a_later_page_is_returned() {
        let calls = Mutex::new(0);
        let result: Result<Vec<u32>> = collect_pages(|_| {
            let mut calls = calls.lock().unwrap();
            *calls += 1;
            let n = *calls;
            async move {
                if n == 1 {
                    Ok((vec![1], Some("next".to_owned())))
                } else {
                    Err(Error::Throttled {
                        service: Service::Kinesis,
                        message: "slow down".into(),
                    })
                }
            }
        })
        .await;
        assert!(matches!(result, Err(Error::Throttled { .. })));
    }

    #[tokio::test]
    async fn new_pages_stop_when_a_page_adds_nothing_or_at_the_cap() {
        // A service that answers the same token forever, with the same items.
        let calls = Mutex::new(0);
        let items = collect_new_pages(
            10,
            |item: &u32| *item,
            |_| {
                *calls.lock().unwrap() += 1;
                async { Ok((vec![1, 2], Some("next".to_owned()))) }
            },
        )
        .await
        .unwrap();
        assert_eq!(items, vec![1, 2]);
        assert_eq!(*calls.lock().unwrap(), 2);

        // Pages that keep adding stop at the cap.
        let calls = Mutex::new(0u32);
        let items = collect_new_pages(
            3,
            |item: &u32| *item,
            |_| {
                let mut calls = calls.lock().unwrap();
                *calls += 1;
                let n = *calls;
                async move { Ok((vec![n], Some("next".to_owned()))) }
            },
        )
        .await
        .unwrap();
        assert_eq!(items, vec![1, 2, 3]);

        // The last page has no token; repeats are dropped.
        let pages = fake_pages(vec![(vec![1, 2], Some("a")), (vec![2, 3], None)]);
        let items = collect_new_pages(
            10,
            |item: &u32| *item,
            |_| {
                let page = pages.lock().unwrap().pop_front().unwrap();
                async move { Ok(page) }
            },
        )
        .await
        .unwrap();
        assert_eq!(items, vec![1, 2, 3]);
    }
}
