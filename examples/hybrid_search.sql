-- Hybrid search over ragspool's table (EMBEDDING_TYPE=halfvec, TEXT_SEARCH=english):
-- reciprocal rank fusion of the 40 chunks nearest to the query's embedding and the
-- 40 best full-text matches of its words; a chunk scores 1 / (60 + its rank) in each
-- list it is in. psql variables: query_embedding ('[0.12,-0.5,...]', the query
-- embedded by the model that embedded the chunks) and query_text.
WITH by_meaning AS (
    SELECT doc_id, chunk_index,
           rank() OVER (ORDER BY embedding <=> :'query_embedding'::halfvec) AS r
    FROM rag_chunks
    ORDER BY embedding <=> :'query_embedding'::halfvec
    LIMIT 40
), by_words AS (
    SELECT doc_id, chunk_index,
           rank() OVER (ORDER BY ts_rank_cd(content_tsv, query) DESC) AS r
    FROM rag_chunks, websearch_to_tsquery('english', :'query_text') AS query
    WHERE content_tsv @@ query
    ORDER BY ts_rank_cd(content_tsv, query) DESC
    LIMIT 40
)
SELECT doc_id, chunk_index,
       round(coalesce(1.0 / (60 + m.r), 0) + coalesce(1.0 / (60 + w.r), 0), 5) AS score,
       m.r AS meaning_rank, w.r AS words_rank
FROM by_meaning m FULL JOIN by_words w USING (doc_id, chunk_index)
ORDER BY score DESC, doc_id, chunk_index
LIMIT 10;
